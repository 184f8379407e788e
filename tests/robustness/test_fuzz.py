"""Bad input against the live gateway: never a 5xx, always JSON, OpenAI-shaped 4xx, store unchanged.

Property-based runs (hypothesis, derandomized so a run is reproducible, no example database so
nothing is written outside this folder, no shrinking so a failing run stays fast: the failing
example is printed as generated) cover random JSON shapes, random bytes, mutated valid bodies,
query strings and path ids. Deterministic tests pin the edges: deep nesting, the body limit,
content types, oversized headers, unicode in valid messages, odd ids in paths.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2 as httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core.settings import Settings
from gateway import routes
from tests.conftest import MASTER_KEY, Gateway, Services, Tenant
from tests.mock_upstream import MockUpstream
from tests.robustness.conftest import (
    assert_clean,
    assert_error_body,
    describe,
    record,
    sse_data,
    store_counts,
)

MAX_BODY = Settings().max_body_bytes

# endpoint name -> (path, needs the master key)
POSTS: dict[str, tuple[str, bool]] = {
    "chat": ("/v1/chat/completions", False),
    "embeddings": ("/v1/embeddings", False),
    "memory items": ("/v1/memory/items", False),
    "admin keys": ("/admin/keys", True),
    "admin workspaces": ("/admin/workspaces", True),
}
ROLES = ["system", "developer", "user", "assistant", "tool", "function"]


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def auth_for(endpoint: str, tenant: Tenant) -> dict[str, str]:
    return bearer(MASTER_KEY if POSTS[endpoint][1] else tenant.key)


# --- strategies ---

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
)


def mostly(
    valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any] = JSON_VALUES
) -> st.SearchStrategy[Any]:
    """Three times in four the valid shape, else anything: many bodies get past validation,
    so recall, the upstream and the store see the odd values too."""
    return st.integers(0, 3).flatmap(lambda pick: other if pick == 3 else valid)


MESSAGE = st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(ROLES)), "content": mostly(st.text(max_size=60))},
    optional={"name": mostly(st.text(max_size=10)), "tool_calls": JSON_VALUES},
)
CHAT_BODY = st.fixed_dictionaries(
    {
        "model": mostly(st.sampled_from(["mock/gpt", "fast", "alt/fuzz"])),
        "messages": mostly(st.lists(MESSAGE, min_size=1, max_size=4)),
    },
    # only fields the mock upstream does not read: a body the gateway forwards must not be able
    # to crash the mock (a mock 500 would be relayed as a 502 by design)
    optional={
        "stream": mostly(st.booleans()),
        "user": mostly(st.text(max_size=20)),
        "max_tokens": mostly(st.integers()),
        "temperature": JSON_VALUES,
        "metadata": JSON_VALUES,
        "x_fuzz": JSON_VALUES,
    },
)
CHAT_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Memory": mostly(st.sampled_from(["on", "off", "read", "write"]), HEADER_TEXT),
        "X-Thread-Id": mostly(
            st.from_regex(r"[A-Za-z0-9._:/@-]{1,40}", fullmatch=True), HEADER_TEXT
        ),
        "X-Memory-User": HEADER_TEXT,
    },
)
EMBEDDINGS_BODY = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["alt/embed", "mock/gpt"]) | JSON_VALUES,
        "input": st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=3) | JSON_VALUES,
    },
    optional={"encoding_format": st.sampled_from(["float", "base64"]), "user": JSON_VALUES},
)
TIMESTAMPS = (
    st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.datetimes().map(lambda d: d.isoformat())
    | st.text(max_size=30)
)
ITEM = st.fixed_dictionaries(
    {"content": st.text(max_size=60) | JSON_VALUES},
    optional={
        "kind": st.sampled_from(["note", "fact", "message"]) | JSON_VALUES,
        "role": st.text(max_size=10) | JSON_VALUES,
        "thread_id": st.text(max_size=20) | JSON_VALUES,
        "user": st.text(max_size=20) | JSON_VALUES,
        "metadata": st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3) | JSON_VALUES,
        "created_at": TIMESTAMPS | JSON_VALUES,
    },
)
ITEMS_BODY = st.fixed_dictionaries(
    {"items": st.lists(ITEM | JSON_VALUES, min_size=1, max_size=3) | JSON_VALUES}
) | st.lists(ITEM, min_size=1, max_size=3)
WORKSPACE_BODY = st.fixed_dictionaries(
    {"name": st.text(max_size=210) | JSON_VALUES}, optional={"settings": JSON_VALUES}
)
NUMBERS = st.integers() | st.floats(allow_nan=False, allow_infinity=False)


def key_body(workspace: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"workspace": st.just(workspace) | st.text(max_size=20) | JSON_VALUES},
        optional={
            "name": st.text(max_size=250) | JSON_VALUES,
            "expires_in_days": NUMBERS | JSON_VALUES,
            "rpm_limit": NUMBERS | JSON_VALUES,
            "tpm_limit": NUMBERS | JSON_VALUES,
        },
    )


def encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --- random shapes and bytes: always a 4xx, nothing stored, nothing forwarded ---


def test_random_json_shapes_are_4xx_and_change_nothing(
    raw: httpx.Client,
    services: Services,
    tenant: Tenant,
    mock: MockUpstream,
    statuses: Counter[int],
) -> None:
    before, upstream_before, tried = store_counts(services, tenant.name), len(mock.requests), 0

    @fuzz(120)
    @given(endpoint=st.sampled_from(sorted(POSTS)), body=JSON_VALUES, ascii_only=st.booleans())
    def run(endpoint: str, body: Any, ascii_only: bool) -> None:
        nonlocal tried
        tried += 1
        response = raw.post(
            POSTS[endpoint][0], content=encode(body, ascii_only), headers=auth_for(endpoint, tenant)
        )
        assert_clean(response)
        assert 400 <= response.status_code < 500, describe(response)

    try:
        run()
    finally:
        record("random JSON shapes (5 POST endpoints)", tried, statuses)
    assert store_counts(services, tenant.name) == before
    assert len(mock.requests) == upstream_before, "bad input reached the upstream"


INVALID_UTF8 = [
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\xe2\x82",
]
TEMPLATES = {
    "chat": (b'{"model": "mock/gpt", "messages": [{"role": "user", "content": "', b'"}]}'),
    "embeddings": (b'{"model": "alt/embed", "input": "', b'"}'),
    "memory items": (b'{"items": [{"content": "', b'"}]}'),
    "admin keys": (b'{"workspace": "', b'"}'),
    "admin workspaces": (b'{"name": "', b'"}'),
}


def test_random_bytes_and_invalid_utf8_are_400_and_change_nothing(
    raw: httpx.Client,
    services: Services,
    tenant: Tenant,
    mock: MockUpstream,
    statuses: Counter[int],
) -> None:
    before, upstream_before, tried = store_counts(services, tenant.name), len(mock.requests), 0

    @fuzz(120)
    @given(
        endpoint=st.sampled_from(sorted(POSTS)),
        noise=st.binary(max_size=300),
        junk=st.sampled_from(INVALID_UTF8),
        spliced=st.booleans(),
    )
    def run(endpoint: str, noise: bytes, junk: bytes, spliced: bool) -> None:
        nonlocal tried
        tried += 1
        if spliced:  # a valid body whose one string carries invalid UTF-8
            head, tail = TEMPLATES[endpoint]
            ascii_noise = bytes(b for b in noise[:20] if b < 0x80 and b not in b'"\\')
            body = head + ascii_noise + junk + tail
        else:
            body = noise
        response = raw.post(POSTS[endpoint][0], content=body, headers=auth_for(endpoint, tenant))
        assert_clean(response)
        assert response.status_code == 400, describe(response)
        if spliced:
            assert response.json()["error"]["code"] == "invalid_json", describe(response)

    try:
        run()
    finally:
        record("random bytes / invalid UTF-8 (5 POST endpoints)", tried, statuses)
    assert store_counts(services, tenant.name) == before
    assert len(mock.requests) == upstream_before, "bad input reached the upstream"


# --- mutated valid bodies: accepted or a clean 4xx; what is stored is what was acknowledged ---


def test_mutated_chat_bodies_never_5xx(
    raw: httpx.Client, tenant: Tenant, mock: MockUpstream, statuses: Counter[int]
) -> None:
    """Memory is on by default here, so accepted turns also go through recall and the store."""
    tried = 0

    @fuzz(100)
    @given(body=CHAT_BODY, headers=CHAT_HEADERS, ascii_only=st.booleans())
    def run(body: dict[str, Any], headers: dict[str, str], ascii_only: bool) -> None:
        nonlocal tried
        tried += 1
        upstream_before = len(mock.requests)
        response = raw.post(
            "/v1/chat/completions",
            content=encode(body, ascii_only),
            headers={**bearer(tenant.key), **headers},
        )
        assert_clean(response)
        if response.status_code in (400, 413):
            assert len(mock.requests) == upstream_before, f"forwarded: {describe(response)}"

    try:
        run()
    finally:
        record("mutated chat bodies", tried, statuses)


def test_mutated_embeddings_bodies_never_5xx(
    raw: httpx.Client, tenant: Tenant, statuses: Counter[int]
) -> None:
    tried = 0

    @fuzz(60)
    @given(body=EMBEDDINGS_BODY, ascii_only=st.booleans())
    def run(body: dict[str, Any], ascii_only: bool) -> None:
        nonlocal tried
        tried += 1
        response = raw.post(
            "/v1/embeddings", content=encode(body, ascii_only), headers=bearer(tenant.key)
        )
        assert_clean(response)

    try:
        run()
    finally:
        record("mutated embeddings bodies", tried, statuses)


def test_mutated_memory_items_store_exactly_what_was_acknowledged(
    raw: httpx.Client, services: Services, tenant: Tenant, statuses: Counter[int]
) -> None:
    before, acknowledged, tried = store_counts(services, tenant.name), 0, 0

    @fuzz(100)
    @given(body=ITEMS_BODY, ascii_only=st.booleans())
    def run(body: Any, ascii_only: bool) -> None:
        nonlocal tried, acknowledged
        tried += 1
        response = raw.post(
            "/v1/memory/items", content=encode(body, ascii_only), headers=bearer(tenant.key)
        )
        parsed = assert_clean(response)
        if response.status_code == 201:
            acknowledged += len(parsed["data"])
        else:
            assert response.status_code == 400, describe(response)

    try:
        run()
    finally:
        record("mutated memory item bodies", tried, statuses)
    after = store_counts(services, tenant.name)
    assert after["memory_items"] - before["memory_items"] == acknowledged


def test_mutated_admin_workspace_bodies_create_exactly_what_was_acknowledged(
    raw: httpx.Client, services: Services, statuses: Counter[int]
) -> None:
    before, created, tried = store_counts(services), 0, 0

    @fuzz(60)
    @given(body=WORKSPACE_BODY, ascii_only=st.booleans())
    def run(body: Any, ascii_only: bool) -> None:
        nonlocal tried, created
        tried += 1
        response = raw.post(
            "/admin/workspaces", content=encode(body, ascii_only), headers=bearer(MASTER_KEY)
        )
        assert_clean(response)
        created += response.status_code == 201

    try:
        run()
    finally:
        record("mutated admin workspace bodies", tried, statuses)
    assert store_counts(services)["workspaces"] - before["workspaces"] == created


def test_mutated_admin_key_bodies_create_exactly_what_was_acknowledged(
    raw: httpx.Client, services: Services, tenant: Tenant, statuses: Counter[int]
) -> None:
    before, created, tried = store_counts(services), 0, 0

    @fuzz(80)
    @given(body=key_body(tenant.name), ascii_only=st.booleans())
    def run(body: Any, ascii_only: bool) -> None:
        nonlocal tried, created
        tried += 1
        response = raw.post(
            "/admin/keys", content=encode(body, ascii_only), headers=bearer(MASTER_KEY)
        )
        parsed = assert_clean(response)
        if response.status_code == 201:
            created += 1
            assert parsed["key"].startswith("cmg_")

    try:
        run()
    finally:
        record("mutated admin key bodies", tried, statuses)
    assert store_counts(services)["api_keys"] - before["api_keys"] == created


# --- query strings and path ids ---

QUERY_ENDPOINTS: dict[str, tuple[bool, list[str]]] = {
    "/v1/memory/search": (False, ["q", "k", "mode", "user", "thread_id"]),
    "/v1/memory/threads": (False, ["limit", "after", "user"]),
    "/v1/usage": (False, ["start", "end", "group_by"]),
    "/v1/models": (False, ["after", "limit"]),
    "/admin/usage": (True, ["workspace", "start", "end", "group_by"]),
    "/admin/keys": (True, ["workspace"]),
    "/admin/workspaces": (True, ["limit"]),
}


def test_random_query_strings_never_5xx(
    raw: httpx.Client, services: Services, tenant: Tenant, statuses: Counter[int]
) -> None:
    before, tried = store_counts(services, tenant.name), 0

    @fuzz(100)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        nonlocal tried
        tried += 1
        path = data.draw(st.sampled_from(sorted(QUERY_ENDPOINTS)))
        admin, names = QUERY_ENDPOINTS[path]
        params = data.draw(
            st.dictionaries(st.sampled_from(names), st.text(max_size=40), min_size=1)
        )
        response = raw.get(path, params=params, headers=bearer(MASTER_KEY if admin else tenant.key))
        assert_clean(response)

    try:
        run()
    finally:
        record("random query strings (7 GET endpoints)", tried, statuses)
    assert store_counts(services, tenant.name) == before


# (method, template, admin, body) of every route with a path parameter
PATH_ROUTES: list[tuple[str, str, bool, bytes | None]] = [
    ("GET", "/v1/memory/items/{}", False, None),
    ("DELETE", "/v1/memory/items/{}", False, None),
    ("GET", "/v1/memory/threads/{}", False, None),
    ("DELETE", "/v1/memory/threads/{}", False, None),
    ("DELETE", "/v1/memory/users/{}", False, None),
    ("GET", "/v1/memory/requests/{}", False, None),
    ("GET", "/v1/models/{}", False, None),
    ("GET", "/v1/responses/{}", False, None),
    ("DELETE", "/v1/responses/{}", False, None),
    ("GET", "/v1/responses/{}/input_items", False, None),
    ("PATCH", "/admin/workspaces/{}", True, b'{"settings": {}}'),
    ("POST", "/admin/keys/{}/revoke", True, None),
    ("DELETE", "/admin/keys/{}", True, None),
    ("PATCH", "/admin/keys/{}", True, b'{"rpm_limit": null}'),
]


def test_path_routes_cover_every_route_with_a_path_parameter() -> None:
    """Adding a route to gateway/routes.py with a path parameter must add it here too."""
    table = {(m, row.path) for row in routes.table(None) for m in row.methods if "{" in row.path}
    listed = {(method, template) for method, template, _, _ in PATH_ROUTES}
    assert {(m, re.sub(r"\{[^}]+\}", "{}", p)) for m, p in table} == listed


@pytest.fixture
def seeded(raw: httpx.Client, tenant: Tenant) -> Tenant:
    """A tenant holding a thread, an end user and notes, so deletes have something to miss."""
    secret = uuid.uuid4().hex
    items = [
        {"content": f"seed note {secret}", "thread_id": f"seed-thread-{secret}", "role": "user"},
        {"content": f"seed fact {secret}", "kind": "fact", "user": f"seed-user-{secret}"},
    ]
    response = raw.post("/v1/memory/items", json={"items": items}, headers=bearer(tenant.key))
    assert response.status_code == 201, response.text
    return tenant


def test_random_path_ids_are_4xx_and_change_nothing(
    raw: httpx.Client, services: Services, seeded: Tenant, statuses: Counter[int]
) -> None:
    before, tried = store_counts(services, seeded.name), 0

    @fuzz(100)
    @given(
        route=st.sampled_from(PATH_ROUTES),
        ident=st.text(min_size=1, max_size=60),
        keep_slashes=st.booleans(),
    )
    def run(route: tuple[str, str, bool, bytes | None], ident: str, keep_slashes: bool) -> None:
        nonlocal tried
        tried += 1
        method, template, admin, body = route
        path = template.format(quote(ident, safe="/" if keep_slashes else ""))
        headers = bearer(MASTER_KEY if admin else seeded.key)
        response = raw.request(method, path, content=body, headers=headers)
        assert_clean(response)
        if template != "/v1/memory/users/{}":  # deleting an unknown end user is a no-op 200
            assert 400 <= response.status_code < 500, describe(response)

    try:
        run()
    finally:
        record("random path ids (11 routes)", tried, statuses)
    assert store_counts(services, seeded.name) == before


ODD_IDS = [
    "..",
    "../../admin/keys",
    "..%2f..%2fadmin%2fkeys",
    "%2e%2e%2f%2e%2e%2fadmin%2fkeys",
    "%00",
    "a%00b",
    "%ff%fe",
    "%",
    "%zz",
    "x" * 8000,
    "%27%20OR%20%271%27%3D%271",
    "1%3B%20DROP%20TABLE%20memory_items%3B%20--",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
    "%F0%9F%98%80",
    "%E2%80%AE",
    "%2F",
]


def raw_request(
    gateway: Gateway, method: str, target: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, dict[str, str], bytes]:
    """The request line exactly as given: no client-side normalisation of ``..`` or ``%``."""
    url = urlsplit(gateway.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("ident", ODD_IDS, ids=lambda i: i[:30])
def test_odd_ids_in_paths_are_404_or_400(
    gateway: Gateway, services: Services, seeded: Tenant, ident: str
) -> None:
    before = store_counts(services, seeded.name)
    failures = []
    for method, template, admin, body in PATH_ROUTES:
        target = template.format(ident)
        headers = {
            **bearer(MASTER_KEY if admin else seeded.key),
            "Content-Type": "application/json",
        }
        status, response_headers, content = raw_request(gateway, method, target, headers, body)
        ok = status < 500 and response_headers.get("content-type", "").startswith(
            "application/json"
        )
        if ok and status >= 400:
            assert_error_body(orjson.loads(content), f"{method} {target}")
        if template != "/v1/memory/users/{}" and not 400 <= status < 500:
            ok = False
        if not ok:
            failures.append(f"{method} {target[:80]} -> {status}: {content[:200]!r}")
    record(f"odd path id {ident[:20]!r} x {len(PATH_ROUTES)} routes", len(PATH_ROUTES))
    assert not failures, "\n".join(failures)
    assert store_counts(services, seeded.name) == before


# --- deep nesting and the body limit ---

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
JUST_TOO_DEEP = b'{"model": "mock/gpt", "x": ' + b"[" * 1100 + b"]" * 1100 + b"}"


@pytest.mark.parametrize("endpoint", sorted(POSTS))
def test_deeply_nested_bodies_are_400(
    raw: httpx.Client, services: Services, tenant: Tenant, endpoint: str, statuses: Counter[int]
) -> None:
    before = store_counts(services, tenant.name)
    for body in (DEEP_ARRAY, DEEP_OBJECT, JUST_TOO_DEEP):
        response = raw.post(POSTS[endpoint][0], content=body, headers=auth_for(endpoint, tenant))
        assert_clean(response)
        assert response.status_code == 400, describe(response)
        assert response.json()["error"]["code"] == "invalid_json", describe(response)
    record(f"deep nesting ({endpoint})", 3, statuses)
    assert store_counts(services, tenant.name) == before


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("model", ["fast", "alt/deep", "mock/gpt"])
def test_nesting_the_parser_accepts_is_never_a_500(
    raw: httpx.Client, tenant: Tenant, model: str
) -> None:
    """orjson reads 1,024 levels but writes only 254: a body the gateway re-serialises (alias or
    prefix rewrite, memory injection) must not die in ``orjson.dumps``."""
    body = (
        b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": "deep"}],'
        b' "x_deep": ' + nested(600) + b"}"
    )
    response = raw.post("/v1/chat/completions", content=body, headers=bearer(tenant.key))
    record(f"600-deep extra field, model {model}", 1)
    assert_clean(response)


def test_deep_metadata_does_not_poison_the_item_or_search(
    raw: httpx.Client, tenant: Tenant
) -> None:
    marker = f"deepmeta{uuid.uuid4().hex[:8]}"
    body = (
        b'{"items": [{"content": "'
        + marker.encode()
        + b' note", "metadata": {"k": '
        + nested(300)
        + b"}}]}"
    )
    created = raw.post("/v1/memory/items", content=body, headers=bearer(tenant.key))
    record("300-deep item metadata", 3)
    assert_clean(created)
    if created.status_code == 201:
        item_id = created.json()["data"][0]["id"]
        assert_clean(raw.get(f"/v1/memory/items/{item_id}", headers=bearer(tenant.key)))
        params = {"q": marker, "mode": "lexical"}
        assert_clean(raw.get("/v1/memory/search", params=params, headers=bearer(tenant.key)))


def over_the_limit() -> bytes:
    """A JSON object of exactly ``CMG_MAX_BODY_BYTES + 1`` bytes."""
    head = b'{"model": "mock/gpt"'
    return head + b" " * (MAX_BODY - len(head)) + b"}"


def test_a_body_one_byte_over_the_limit_is_413_everywhere(
    raw: httpx.Client,
    services: Services,
    tenant: Tenant,
    mock: MockUpstream,
    statuses: Counter[int],
) -> None:
    before, upstream_before = store_counts(services, tenant.name), len(mock.requests)
    body = over_the_limit()
    assert len(body) == MAX_BODY + 1
    targets = [("POST", path, auth_for(name, tenant)) for name, (path, _) in POSTS.items()]
    targets += [
        ("PATCH", f"/admin/workspaces/{tenant.name}", bearer(MASTER_KEY)),
        ("PATCH", f"/admin/keys/{tenant.key_id}", bearer(MASTER_KEY)),
    ]
    for method, path, headers in targets:
        for chunked in (False, True):  # Content-Length declared, then streamed without one
            content: Any = iter([body[: MAX_BODY // 2], body[MAX_BODY // 2 :]]) if chunked else body
            response = raw.request(method, path, content=content, headers=headers)
            assert_clean(response)
            assert response.status_code == 413, describe(response)
            assert response.json()["error"]["code"] == "body_too_large"
    record("bodies one byte over the limit (7 endpoints x 2 framings)", 2 * len(targets), statuses)
    assert store_counts(services, tenant.name) == before
    assert len(mock.requests) == upstream_before


# --- content types and headers ---


def valid_bodies(tenant: Tenant) -> dict[str, bytes]:
    return {
        "chat": b'{"model": "mock/gpt", "messages": [{"role": "user", "content": "content type"}]}',
        "embeddings": b'{"model": "alt/embed", "input": "content type"}',
        "memory items": b'{"items": [{"content": "content type note"}]}',
        "admin keys": orjson.dumps({"workspace": tenant.name}),
        "admin workspaces": orjson.dumps({"name": f"ct-{uuid.uuid4().hex[:10]}"}),
    }


CONTENT_TYPES: list[tuple[str | None, bytes | None]] = [
    # (Content-Type, body); None body: the endpoint's valid JSON body under that type
    ("text/plain", None),
    (None, None),
    ("application/json; charset=latin-1", None),
    (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nmock/gpt\r\n--xyz--\r\n',
    ),
    ("application/x-www-form-urlencoded", b"model=mock%2Fgpt&messages=hi"),
    ("application/xml", b"<request><model>mock/gpt</model></request>"),
    ("application/json", b"\xef\xbb\xbf{}"),  # a UTF-8 byte-order mark
]


@pytest.mark.parametrize("endpoint", sorted(POSTS))
def test_wrong_content_types_get_a_clean_answer(
    raw: httpx.Client, tenant: Tenant, endpoint: str, statuses: Counter[int]
) -> None:
    for content_type, body in CONTENT_TYPES:
        headers = {**auth_for(endpoint, tenant), "X-Memory": "off"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        content = valid_bodies(tenant)[endpoint] if body is None else body
        response = raw.post(POSTS[endpoint][0], content=content, headers=headers)
        assert_clean(response)
        if body is not None:  # not JSON at all: always a 400
            assert response.status_code == 400, describe(response)
    record(f"content types ({endpoint})", len(CONTENT_TYPES), statuses)


CHAT = b'{"model": "mock/gpt", "messages": [{"role": "user", "content": "headers"}]}'


def header_cases(key: str) -> list[tuple[str, list[tuple[str, str]]]]:
    auth = ("Authorization", f"Bearer {key}")
    return [
        ("64 KB Authorization", [("Authorization", "Bearer " + "k" * 65536)]),
        ("1 MB Authorization", [("Authorization", "Bearer " + "k" * (1 << 20))]),
        ("100 KB X-Thread-Id", [auth, ("X-Thread-Id", "t" * 100_000)]),
        ("64 KB X-Memory-User", [auth, ("X-Memory-User", "u" * 65536)]),
        ("64 KB X-Request-Id", [auth, ("X-Request-Id", "r" * 65536)]),
        ("64 KB X-Memory", [auth, ("X-Memory", "o" * 65536)]),
        ("64 KB header name", [auth, ("X-" + "n" * 65536, "v")]),
        ("2,000 headers", [auth, *((f"X-Fuzz-{i}", "v" * 20) for i in range(2000))]),
        ("500 Authorization headers", [auth] * 500),
    ]


@pytest.mark.parametrize("case", range(9), ids=[c[0] for c in header_cases("k")])
def test_oversized_headers_get_a_4xx_never_a_5xx_or_a_hang(
    raw: httpx.Client, tenant: Tenant, case: int, statuses: Counter[int]
) -> None:
    name, headers = header_cases(tenant.key)[case]
    try:
        response = raw.post("/v1/chat/completions", content=CHAT, headers=headers, timeout=15)
    except httpx.RemoteProtocolError:
        record(f"oversized headers: {name} (connection dropped)", 1)
        return  # the HTTP server dropped the connection: a refusal, not a hang
    record(f"oversized headers: {name}", 1, statuses)
    assert_clean(response, server_may_answer=True)


# --- unicode, NUL and size inside valid messages (memory on: recall and store run) ---

UNICODE = {
    "rtl marks": "abc \u202eolleh\u202c \u200f\u05e9\u05dc\u05d5\u05dd\u200e done",
    "emoji zwj": "family 👨\u200d👩\u200d👧\u200d👦 flag 🏳️\u200d🌈 skin 👍🏽",
    "combining": "e\u0301 n\u0303 Z\u0351\u0352\u0353\u0354",
    "bom and zero width": "\ufeffstart\u200b\u200c\u200dend\u2060",
    "private use and noncharacters": "\ue000 \U000f0000 \ufffe \uffff",
    "nul": "before\u0000after",
    "only nul": "\u0000",
    "1 MB of prose": ("The quick brown fox jumps over the lazy dog near the riverbank. " * 16500),
    # distinct tokens (ids, hashes, base64): its tsvector outgrows PostgreSQL's 1 MB limit
    "1 MB log dump": " ".join(hashlib.sha256(b"%d" % i).hexdigest()[:32] for i in range(32000)),
}


def stored_turn(raw: httpx.Client, tenant: Tenant, thread: str) -> list[str]:
    response = raw.get(f"/v1/memory/threads/{quote(thread, safe='')}", headers=bearer(tenant.key))
    assert response.status_code == 200, describe(response)
    return [m["content"] for m in response.json()["messages"]]


def same_text(stored: str, sent: str) -> bool:
    """Equal, or equal once NUL is stripped or replaced (PostgreSQL text cannot hold NUL)."""
    return stored in (sent, sent.replace("\x00", ""), sent.replace("\x00", "\ufffd"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(UNICODE))
def test_unicode_edge_cases_in_valid_messages_are_answered_and_stored(
    raw: httpx.Client, tenant: Tenant, case: str, statuses: Counter[int]
) -> None:
    content = UNICODE[case]
    body = {"model": "mock/gpt", "messages": [{"role": "user", "content": content}]}
    response = raw.post(
        "/v1/chat/completions", content=orjson.dumps(body), headers=bearer(tenant.key), timeout=60
    )
    record(f"unicode in a valid message: {case}", 1, statuses)
    assert_clean(response)
    assert response.status_code == 200, describe(response)
    assert response.json()["choices"][0]["message"]["content"] == f"echo: {content}"
    stored = stored_turn(raw, tenant, response.headers["x-memory-thread"])
    # NUL is stripped before storage; a message that was nothing but NUL leaves no text to keep
    expected = [t for t in (content, f"echo: {content}") if t.replace("\x00", "")]
    assert len(stored) == len(expected)
    assert all(same_text(s, t) for s, t in zip(stored, expected, strict=True))


def test_nul_in_a_streamed_message_is_answered_and_stored(
    raw: httpx.Client, tenant: Tenant
) -> None:
    content = "stream\u0000ed"
    body = {"model": "mock/gpt", "stream": True, "messages": [{"role": "user", "content": content}]}
    response = raw.post("/v1/chat/completions", json=body, headers=bearer(tenant.key))
    record("NUL in a streamed message", 1)
    assert_clean(response)
    assert response.status_code == 200, describe(response)
    text = "".join(
        (orjson.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in sse_data(response.text)[:-1]
    )
    assert text == f"echo: {content}"
    stored = stored_turn(raw, tenant, response.headers["x-memory-thread"])
    assert len(stored) == 2 and same_text(stored[0], content)


def test_a_lone_surrogate_escape_is_a_clean_400(raw: httpx.Client, tenant: Tenant) -> None:
    body = b'{"model": "mock/gpt", "messages": [{"role": "user", "content": "lone \\ud800 here"}]}'
    response = raw.post("/v1/chat/completions", content=body, headers=bearer(tenant.key))
    record("lone surrogate escape", 1)
    assert_clean(response)
    assert response.status_code in (200, 400), describe(response)


# --- values the parser accepts but the store cannot hold ---


@pytest.mark.parametrize("tool_calls", [5, True, 1.5], ids=["int", "bool", "float"])
def test_ill_typed_tool_calls_in_history_are_not_a_500(
    raw: httpx.Client, tenant: Tenant, tool_calls: Any
) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok", "tool_calls": tool_calls},
        {"role": "user", "content": "second"},
    ]
    response = raw.post(
        "/v1/chat/completions",
        json={"model": "mock/gpt", "messages": messages},
        headers=bearer(tenant.key),
    )
    record(f"tool_calls={tool_calls!r} in history", 1)
    assert_clean(response)


def test_nul_in_the_end_user_is_not_a_503(raw: httpx.Client, tenant: Tenant) -> None:
    body = {
        "model": "mock/gpt",
        "user": "user\u0000x",
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = raw.post("/v1/chat/completions", json=body, headers=bearer(tenant.key))
    record("NUL in the end user", 1)
    assert_clean(response)


def test_a_replayed_request_id_still_gets_its_answer(raw: httpx.Client, tenant: Tenant) -> None:
    """Clients retry with the same X-Request-Id; the retry must not fail on the injection log."""
    headers = {**bearer(tenant.key), "X-Request-Id": f"replay-{uuid.uuid4().hex}"}
    body = {"model": "mock/gpt", "messages": [{"role": "user", "content": "retry me"}]}
    statuses = [raw.post("/v1/chat/completions", json=body, headers=headers) for _ in range(2)]
    record("replayed X-Request-Id", 2)
    for response in statuses:
        assert_clean(response)
        assert response.status_code == 200, describe(response)


NUL_ITEMS = {
    "content": {"content": "note\u0000x"},
    "metadata": {"content": "note", "metadata": {"k": "v\u0000"}},
    "thread_id": {"content": "note", "thread_id": "th\u0000"},
    "user": {"content": "note", "user": "u\u0000"},
}


@pytest.mark.parametrize("field", sorted(NUL_ITEMS))
def test_nul_in_a_memory_item_is_stored_or_a_400(
    raw: httpx.Client, services: Services, tenant: Tenant, field: str
) -> None:
    before = store_counts(services, tenant.name)
    response = raw.post(
        "/v1/memory/items", json={"items": [NUL_ITEMS[field]]}, headers=bearer(tenant.key)
    )
    record(f"NUL in memory item {field}", 1)
    assert_clean(response)
    if response.status_code != 201:
        assert store_counts(services, tenant.name) == before


NUL_QUERIES = [
    ("/v1/memory/search", {"q": "a\u0000b"}, False),
    ("/v1/memory/search", {"q": "ab", "user": "\u0000"}, False),
    ("/v1/memory/search", {"q": "ab", "thread_id": "\u0000"}, False),
    ("/v1/memory/threads", {"after": "\u0000"}, False),
    ("/v1/memory/threads", {"user": "\u0000"}, False),
    ("/admin/keys", {"workspace": "\u0000"}, True),
    ("/admin/usage", {"workspace": "\u0000"}, True),
]


@pytest.mark.parametrize(
    ("path", "params", "admin"),
    NUL_QUERIES,
    ids=[f"{p}?{next(iter(q))}" for p, q, _ in NUL_QUERIES],
)
def test_nul_in_a_query_string_is_not_a_500(
    raw: httpx.Client, tenant: Tenant, path: str, params: dict[str, str], admin: bool
) -> None:
    response = raw.get(path, params=params, headers=bearer(MASTER_KEY if admin else tenant.key))
    record(f"NUL in {path}?{next(iter(params))}={params[next(iter(params))]!r}", 1)
    assert_clean(response)


def admin_cases(tenant: Tenant) -> dict[str, tuple[str, str, dict[str, Any]]]:
    key = f"/admin/keys/{tenant.key_id}"
    return {
        "expires_in_days=1e300": (
            "POST",
            "/admin/keys",
            {"workspace": tenant.name, "expires_in_days": 1e300},
        ),
        "expires_in_days=1e10": (
            "POST",
            "/admin/keys",
            {"workspace": tenant.name, "expires_in_days": 1e10},
        ),
        "rpm_limit=2**31": ("POST", "/admin/keys", {"workspace": tenant.name, "rpm_limit": 2**31}),
        "tpm_limit=2**63": ("POST", "/admin/keys", {"workspace": tenant.name, "tpm_limit": 2**63}),
        "key name of 201 chars": (
            "POST",
            "/admin/keys",
            {"workspace": tenant.name, "name": "n" * 201},
        ),
        "NUL in key name": ("POST", "/admin/keys", {"workspace": tenant.name, "name": "n\u0000"}),
        "NUL in key workspace": ("POST", "/admin/keys", {"workspace": "w\u0000"}),
        "NUL in workspace name": (
            "POST",
            "/admin/workspaces",
            {"name": f"ws\u0000{uuid.uuid4().hex[:6]}"},
        ),
        "PATCH key rpm_limit=2**31": ("PATCH", key, {"rpm_limit": 2**31}),
        "PATCH workspace NUL name": ("PATCH", "/admin/workspaces/w%00", {"settings": {}}),
    }


@pytest.mark.parametrize("case", sorted(admin_cases(Tenant("ws", "k", "id"))))
def test_admin_values_out_of_range_are_400(
    raw: httpx.Client, services: Services, tenant: Tenant, case: str
) -> None:
    before = store_counts(services)
    method, path, body = admin_cases(tenant)[case]
    response = raw.request(method, path, json=body, headers=bearer(MASTER_KEY))
    record(f"admin: {case}", 1)
    assert_clean(response)
    assert 400 <= response.status_code < 500, describe(response)
    assert store_counts(services) == before


# --- the MCP endpoint: JSON-RPC bodies, tool calls with random arguments ---

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_READ_TOOLS = ["search_memory", "list_threads", "get_thread", "no_such_tool"]


def test_mcp_bodies_and_tool_arguments_never_5xx(
    raw: httpx.Client, services: Services, seeded: Tenant, statuses: Counter[int]
) -> None:
    before, tried = store_counts(services, seeded.name), 0
    headers = {
        **bearer(seeded.key),
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }

    @fuzz(120)
    @given(
        shape=st.sampled_from(["call", "rpc", "bytes"]),
        tool=st.sampled_from(_READ_TOOLS),
        arguments=_JSON,
        method=st.text(max_size=20),
        blob=st.binary(max_size=200),
    )
    def run(shape: str, tool: str, arguments: Any, method: str, blob: bytes) -> None:
        nonlocal tried
        tried += 1
        if shape == "bytes":
            content = blob
        else:
            params = {"name": tool, "arguments": arguments} if shape == "call" else arguments
            rpc = {
                "jsonrpc": "2.0",
                "id": tried,
                "method": "tools/call" if shape == "call" else method,
            }
            content = json.dumps({**rpc, "params": params}).encode()  # big ints too
        response = raw.post("/mcp", content=content, headers=headers)
        assert response.status_code < 500, describe(response)
        if response.status_code < 400 and response.content:
            body = orjson.loads(response.content)  # JSON-RPC: a result or an error, never a crash
            assert "result" in body or "error" in body, describe(response)

    try:
        run()
    finally:
        record("mcp bodies and read-only tool arguments", tried, statuses)
    assert store_counts(services, seeded.name) == before
