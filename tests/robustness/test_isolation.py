"""Every memory, usage and admin endpoint against every wrong caller, a matrix built from routes.

The routes come from ``create_app(Settings())`` (built, never started), so a new endpoint joins
the matrix by itself; a new path parameter fails loudly until the matrix knows which id of the
owner workspace to put there. Callers: no key, an unknown key, a revoked key, an expired key, a
workspace key on admin endpoints, the master key on workspace endpoints, and another workspace
(which must get 404 for the owner's items, threads and requests, and never the owner's content).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from core.settings import Settings
from gateway.app import create_app
from gateway.services import workspaces
from tests.conftest import MASTER_KEY, Gateway, Services, Tenant, make_tenant, run_db
from tests.mock_upstream import MockUpstream
from tests.robustness.conftest import assert_error_body, record

PUBLIC = {"/healthz", "/readyz", "/metrics"}
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def routes() -> list[tuple[str, str]]:
    """(method, path template) of every route of the app, HEAD aside (it mirrors GET)."""
    app = create_app(Settings()).app  # type: ignore[attr-defined]
    found = [(m, r.path) for r in app.routes for m in sorted(r.methods or ()) if m != "HEAD"]
    # The console's pages sign in with a session cookie, not a key: their own matrix (another
    # workspace's ids, CSRF, signed-out pages) is tests/gateway/console/test_console.py.
    found = [(m, p) for m, p in found if not p.startswith("/ui")]
    public = {path for _, path in found if not path.startswith(("/v1/", "/admin/", "/mcp"))}
    assert public == PUBLIC, f"a new public route needs a decision here: {public - PUBLIC}"
    return [(m, p) for m, p in found if p not in PUBLIC]


ROUTES = routes()


@dataclass
class Owner:
    """A workspace with something in every kind of memory, plus keys that no longer work."""

    tenant: Tenant
    secret: str  # in every piece of content the owner stored
    item_id: str
    thread: str
    user: str
    request_id: str
    revoked_key: str
    expired_key: str
    response_id: str

    def path_value(self, name: str, template: str) -> str:
        values = {
            "item_id": self.item_id,
            "thread_id": self.thread,
            "user": self.user,
            "request_id": self.request_id,
            "response_id": self.response_id,
            "key_id": self.tenant.key_id,
            "name": self.tenant.name,
            "model": "mock/gpt",
        }
        if name not in values:
            pytest.fail(
                f"teach the isolation matrix which owner id goes in {{{name}}} of {template}"
            )
        return values[name]

    def url(self, template: str) -> str:
        return _PARAM.sub(lambda m: self.path_value(m.group(1), template), template)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def extra_key(
    services: Services, workspace: str, expires_in_days: float | None = None
) -> tuple[str, str]:
    async def work(session: Any) -> tuple[str, workspaces.KeyInfo]:
        return await workspaces.create_key(session, workspace, expires_in_days=expires_in_days)

    secret, info = run_db(services, work)
    return secret, info.id


@pytest.fixture(scope="module")
def owner(gateway: Gateway, services: Services) -> Owner:
    tenant = make_tenant(services)
    secret = f"ownersecret{uuid.uuid4().hex[:12]}"
    thread, user = f"owner-thread-{uuid.uuid4().hex[:8]}", f"owner-user-{uuid.uuid4().hex[:8]}"
    request_id = f"owner-req-{uuid.uuid4().hex}"
    revoked_key, revoked_id = extra_key(services, tenant.name)
    expired_key, _ = extra_key(services, tenant.name, expires_in_days=0.5 / 86400)
    with httpx.Client(base_url=gateway.url, timeout=30, headers=bearer(tenant.key)) as http:
        note = {"content": f"{secret}: the launch code is tangerine", "thread_id": thread,
                "user": user, "role": "user"}  # fmt: skip
        added = http.post("/v1/memory/items", json={"items": [note]})
        assert added.status_code == 201, added.text
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "mock/gpt", "user": user,
                  "messages": [{"role": "user", "content": f"remember {secret}: tangerine"}]},
            headers={"X-Thread-Id": thread, "X-Request-Id": request_id},
        )  # fmt: skip
        assert chat.status_code == 200, chat.text
        stored = http.post("/v1/responses", json={"model": "mock/gpt", "input": f"{secret} hi"})
        assert stored.status_code == 200, stored.text
        revoke = http.post(f"/admin/keys/{revoked_id}/revoke", headers=bearer(MASTER_KEY))
        assert revoke.status_code == 200, revoke.text
    time.sleep(0.6)  # the expired key's half second is over
    return Owner(
        tenant,
        secret,
        added.json()["data"][0]["id"],
        thread,
        user,
        request_id,
        revoked_key,
        expired_key,
        stored.json()["id"],
    )


@pytest.fixture(scope="module")
def other(services: Services) -> Tenant:
    return make_tenant(services)


def body_for(method: str, template: str, owner: Owner, other_secret: str) -> bytes | None:
    if method not in ("POST", "PATCH", "PUT"):
        return None
    bodies: dict[str, Any] = {
        "/v1/chat/completions": {
            "model": "mock/gpt",
            "messages": [{"role": "user", "content": f"{other_secret} what is the launch code?"}],
        },
        "/v1/embeddings": {"model": "alt/embed", "input": "launch code"},
        "/v1/responses": {"model": "mock/gpt", "input": f"{other_secret} what is the launch code?"},
        "/v1/messages": {
            "model": "mock/gpt",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": f"{other_secret} what is the launch code?"}],
        },
        "/v1/memory/items": {"items": [{"content": f"{other_secret} note"}]},
        "/admin/workspaces": {"name": f"matrix-{uuid.uuid4().hex[:10]}"},
        "/admin/keys": {"workspace": owner.tenant.name},
        "/admin/workspaces/{name}": {"settings": {"memory": "off"}},
        "/admin/keys/{key_id}": {"rpm_limit": 1},
        "/mcp": {  # the MCP tools search the same memory: the owner's must stay out
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "search_memory", "arguments": {"query": "launch code tangerine"}},
        },
    }
    return orjson.dumps(bodies.get(template, {}))


QUERIES = {"/v1/memory/search": {"q": "launch code tangerine"}}

# per-resource endpoints: another workspace naming the owner's id must get 404
PER_RESOURCE = {"item_id", "thread_id", "request_id", "response_id"}

# cell -> (which routes, expected status, expected code for /v1 routes, for /admin routes)
CELLS = {
    "no key": ("all", 401, "missing_api_key", "missing_api_key"),
    "unknown key": ("all", 401, "invalid_api_key", "invalid_api_key"),
    "revoked key": ("all", 401, "revoked_api_key", "invalid_api_key"),
    "expired key": ("all", 401, "expired_api_key", "invalid_api_key"),
    "workspace key on admin": ("admin", 401, None, "invalid_api_key"),
    "master key on workspace endpoints": ("workspace", 401, "invalid_api_key", None),
}


def key_for(cell: str, owner: Owner) -> str | None:
    return {
        "no key": None,
        "unknown key": "cmg_" + "0" * 43,
        "revoked key": owner.revoked_key,
        "expired key": owner.expired_key,
        "workspace key on admin": owner.tenant.key,
        "master key on workspace endpoints": MASTER_KEY,
    }[cell]


def forbidden_text(owner: Owner, url: str) -> list[str]:
    """What must never appear in an answer to a wrong caller (ids it named itself aside)."""
    ids = [owner.item_id, owner.thread, owner.user, owner.request_id, owner.tenant.key_id,
           owner.response_id]  # fmt: skip
    return [owner.secret, owner.tenant.key, owner.tenant.name] + [i for i in ids if i not in url]


def call(
    http: httpx.Client, method: str, template: str, owner: Owner, key: str | None, other_secret: str
) -> httpx.Response:
    url = owner.url(template)
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",  # what MCP clients send; JSON for the rest
        **(bearer(key) if key else {}),
    }
    body = body_for(method, template, owner, other_secret)
    return http.request(method, url, content=body, headers=headers, params=QUERIES.get(template))


# Anthropic's Messages route answers in Anthropic's error shape (no code: the type says it)
ANTHROPIC = {"/v1/messages"}
ANTHROPIC_TYPES = {401: "authentication_error", 404: "not_found_error"}


def problems(
    response: httpx.Response,
    status: int | None,
    code: str | None,
    forbidden: list[str],
    template: str = "",
) -> list[str]:
    found = []
    if template in ANTHROPIC and response.status_code >= 400:
        body = response.json()
        kind = body.get("error", {}).get("type") if body.get("type") == "error" else None
        if kind != ANTHROPIC_TYPES.get(response.status_code, kind) or kind is None:
            found.append(f"not Anthropic's error shape: {response.text[:200]}")
        code = None
        response = httpx.Response(response.status_code, headers=response.headers, json={
            "error": {"message": body.get("error", {}).get("message", ""), "type": kind,
                      "param": None, "code": None}})  # fmt: skip
    if response.status_code >= 500 or (status is not None and response.status_code != status):
        found.append(f"status {response.status_code}, expected {status}")
    if not response.headers.get("content-type", "").startswith("application/json"):
        found.append("body is not JSON")
    elif response.status_code >= 400:
        try:
            error = assert_error_body(response.json())
            if code is not None and error["code"] != code:
                found.append(f"code {error['code']!r}, expected {code!r}")
        except AssertionError:
            found.append("not the OpenAI error shape")
    found += [f"reveals {text[:40]!r}" for text in forbidden if text in response.text]
    return found


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30, headers={"Connection": "close"}) as client:
        yield client


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_wrong_callers_get_401_on_every_endpoint(
    http: httpx.Client, owner: Owner, cell: str
) -> None:
    which, status, v1_code, admin_code = CELLS[cell]
    failures, tried = [], 0
    for method, template in ROUTES:
        admin = template.startswith("/admin/")
        if (which == "admin" and not admin) or (which == "workspace" and admin):
            continue
        tried += 1
        response = call(http, method, template, owner, key_for(cell, owner), "nobody")
        forbidden = forbidden_text(owner, owner.url(template))
        found = problems(response, status, admin_code if admin else v1_code, forbidden, template)
        failures += [f"{method} {template}: {p}" for p in found]
    record(f"isolation: {cell}", tried)
    assert not failures, "\n".join(failures)


def test_another_workspace_never_sees_or_touches_the_owners_memory(
    http: httpx.Client, owner: Owner, other: Tenant, mock: MockUpstream
) -> None:
    other_secret = f"othersecret{uuid.uuid4().hex[:12]}"
    failures, tried = [], 0
    for method, template in ROUTES:
        if template.startswith("/admin/"):
            continue
        tried += 1
        params = set(_PARAM.findall(template))
        url = owner.url(template)
        response = call(http, method, template, owner, other.key, other_secret)
        status = 404 if params & PER_RESOURCE else None
        code = "not_found" if status == 404 else None
        found = problems(response, status, code, forbidden_text(owner, url), template)
        if template == "/v1/memory/users/{user:path}" and response.status_code == 200:
            if response.json().get("items") != 0:
                found.append(f"deleted the owner's items: {response.text[:200]}")
        failures += [f"{method} {template}: {p}" for p in found]
    forwarded = [r.body for r in mock.requests if other_secret.encode() in r.body]
    assert forwarded, "the other workspace's chat never reached the upstream"
    assert all(owner.secret.encode() not in body for body in forwarded), "owner memory injected"
    record("isolation: another workspace", tried)
    assert not failures, "\n".join(failures)
    owner_keeps_everything(http, owner)


def owner_keeps_everything(http: httpx.Client, owner: Owner) -> None:
    headers = bearer(owner.tenant.key)
    item = http.get(f"/v1/memory/items/{owner.item_id}", headers=headers)
    assert item.status_code == 200 and owner.secret in item.json()["content"], item.text
    thread = http.get(f"/v1/memory/threads/{owner.thread}", headers=headers)
    assert thread.status_code == 200 and len(thread.json()["messages"]) >= 2, thread.text
    injection = http.get(f"/v1/memory/requests/{owner.request_id}", headers=headers)
    assert injection.status_code == 200, injection.text
    stored = http.get(f"/v1/responses/{owner.response_id}", headers=headers)
    assert stored.status_code == 200 and stored.json()["id"] == owner.response_id, stored.text


def test_another_workspace_reusing_the_owners_request_id_gets_its_answer(
    http: httpx.Client, owner: Owner, other: Tenant
) -> None:
    """X-Request-Id is the client's to choose; a collision with another workspace's id must
    neither fail the request (and so reveal that the id exists) nor touch the owner's record."""
    body = {"model": "mock/gpt", "messages": [{"role": "user", "content": "colliding request id"}]}
    headers = {**bearer(other.key), "X-Request-Id": owner.request_id}
    response = http.post("/v1/chat/completions", json=body, headers=headers)
    record("isolation: colliding X-Request-Id", 1)
    assert response.status_code == 200, response.text
    mine = http.get(f"/v1/memory/requests/{owner.request_id}", headers=bearer(owner.tenant.key))
    assert mine.status_code == 200 and mine.json()["thread_id"] == owner.thread, mine.text


def test_the_log_holds_no_key_and_no_content(gateway: Gateway, owner: Owner, other: Tenant) -> None:
    log = gateway.log_path.read_text(errors="replace")
    secrets = {
        "owner key": owner.tenant.key,
        "other key": other.key,
        "revoked key": owner.revoked_key,
        "expired key": owner.expired_key,
        "master key": MASTER_KEY,
        "owner content": owner.secret,
        "other content": "othersecret",
    }
    leaked = [name for name, value in secrets.items() if value in log]
    record("isolation: log scan", len(secrets))
    assert not leaked, f"the gateway log holds: {leaked}"
