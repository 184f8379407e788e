"""Bounded inputs: model names, caches, metric labels, usage keys, n and max_tokens caps, and
anonymous threads that do not collide across keys."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx2 as httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.providers.config import Provider, ProviderConfig
from core.providers.router import Router
from memory import tokens
from tests.conftest import MASTER_KEY, Gateway, Tenant
from tests.gateway.surfaces.test_errors import assert_error_shape
from tests.mock_upstream import MockUpstream

USER = [{"role": "user", "content": "count me"}]
OFF = {"X-Memory": "off"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(http: httpx.Client, key: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
    payload = {"model": "mock/gpt", "messages": USER, **body}
    return http.post(
        "/v1/chat/completions", json=payload, headers={**bearer(key), **OFF, **(headers or {})}
    )


def admin(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return http.request(method, path, headers=bearer(MASTER_KEY), **kwargs)


@pytest.mark.parametrize(
    "model", ["a" * 257, "mock/gpt extra", "mock/gpt\n", "mock/<script>", "m\u00e9tal", "x\x00"]
)
def test_model_names_too_long_or_odd_are_400_naming_model(
    http: httpx.Client, tenant: Tenant, mock: MockUpstream, model: str
) -> None:
    before = len(mock.requests_for(model))
    error = assert_error_shape(chat(http, tenant.key, model=model), 400)
    assert error["param"] == "model" and error["code"] == "invalid_value"
    assert model not in str(error["message"])
    embedded = http.post(
        "/v1/embeddings", json={"model": model, "input": "x"}, headers=bearer(tenant.key)
    )
    assert assert_error_shape(embedded, 400)["param"] == "model"
    assert len(mock.requests_for(model)) == before


def test_longest_allowed_model_name_still_routes(http: httpx.Client, tenant: Tenant) -> None:
    response = chat(http, tenant.key, model="alt/" + "m" * 252)
    assert response.status_code == 200, response.text


def _rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))


def test_megabyte_model_names_leave_gateway_memory_flat(
    gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    """100 unique 1 MB names grew RSS by ~100 MB before the model limit; now all are 4xx and the
    growth stays within the noise of 100 ordinary requests (generous margin: 3x + 16 MB)."""
    gateway_key = tenant.key
    for _ in range(30):  # warm-up: connections, caches, allocator arenas
        assert chat(http, gateway_key).status_code == 200
    start = _rss(gateway.proc.pid)
    for _ in range(100):
        assert chat(http, gateway_key).status_code == 200
    normal = _rss(gateway.proc.pid) - start
    before = _rss(gateway.proc.pid)
    for i in range(100):
        name = f"{i:04d}-{uuid.uuid4().hex}" + "m" * 1_000_000
        response = chat(http, gateway_key, model=name)
        assert 400 <= response.status_code < 500, response.status_code
    grown = _rss(gateway.proc.pid) - before
    assert grown < 3 * max(normal, 0) + 16 * 2**20, (grown, normal)


def test_route_memo_is_a_capped_lru() -> None:
    provider = Provider(name="p", base_url="http://127.0.0.1:9", api_key="")
    router = Router(ProviderConfig({"p": provider}, "p", {}, {}), memo_size=3)
    for name in ("a", "b", "c"):
        router.route(name)
    router.route("a")  # a is now the most recently used
    router.route("d")  # evicts b, the least recently used
    assert list(router._memo) == ["c", "a", "d"]
    for i in range(1000):
        router.route(f"model-{i}")
    assert len(router._memo) == 3


def test_encoding_memo_is_a_capped_lru() -> None:
    for i in range(tokens.encoding_for_model.cache_info().maxsize + 50):  # type: ignore[operator]
        tokens.encoding_for_model(f"gpt-4o-{i}")
    info = tokens.encoding_for_model.cache_info()
    assert info.currsize == info.maxsize == 1024


def _samples(text: str, name: str) -> list[dict[str, str]]:
    return [
        s.labels
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def test_unknown_models_count_as_other_in_metrics_and_usage(
    http: httpx.Client, tenant: Tenant
) -> None:
    stray = f"alt/stray-{uuid.uuid4().hex[:10]}"  # routed by prefix, in no catalog or file
    assert chat(http, tenant.key, model=stray).status_code == 200
    assert chat(http, tenant.key).status_code == 200
    text = http.get("/metrics").text
    assert stray not in text
    requests = _samples(text, "cmg_requests_total")
    assert any(s["model"] == "other" and s["route"] == "chat" for s in requests)
    assert any(s["model"] == "mock/gpt" for s in requests)  # catalog ids keep their label
    assert any(s["model"] == "other" for s in _samples(text, "cmg_tokens_total"))
    deadline = time.monotonic() + 10
    while True:  # usage is flushed every 0.2 s
        data = http.get(
            "/v1/usage", params={"group_by": "model"}, headers=bearer(tenant.key)
        ).json()["data"]
        models = {row["model"]: row["requests"] for row in data}
        if (
            models.get("other") == 1 and models.get("mock/gpt") == 1
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert models == {"other": 1, "mock/gpt": 1}


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("n", 17, "above_cap"),
        ("n", 0, "invalid_type"),
        ("n", "2", "invalid_type"),
        ("n", True, "invalid_type"),
        ("max_tokens", 131073, "above_cap"),
        ("max_completion_tokens", 131073, "above_cap"),
        ("max_tokens", -1, "invalid_type"),
        ("max_completion_tokens", 1.5, "invalid_type"),
    ],
)
def test_n_and_max_tokens_over_the_default_caps_are_400_naming_the_field(
    http: httpx.Client, tenant: Tenant, field: str, value: object, code: str
) -> None:
    error = assert_error_shape(chat(http, tenant.key, **{field: value}), 400)
    assert error["param"] == field and error["code"] == code


def test_workspace_caps_override_the_defaults(http: httpx.Client, tenant: Tenant) -> None:
    settings = {"max_n": 2, "max_completion_tokens": 500}
    patched = admin(http, "PATCH", f"/admin/workspaces/{tenant.name}", json={"settings": settings})
    assert patched.status_code == 200, patched.text
    time.sleep(1.2)  # the gateway caches a key's workspace settings for CMG_AUTH_CACHE_SECONDS
    ok = chat(http, tenant.key, n=2, max_tokens=500)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["choices"]) == 2
    assert assert_error_shape(chat(http, tenant.key, n=3), 400)["param"] == "n"
    over = chat(http, tenant.key, max_completion_tokens=501)
    assert assert_error_shape(over, 400)["param"] == "max_completion_tokens"
    bad = admin(http, "PATCH", f"/admin/workspaces/{tenant.name}", json={"settings": {"max_n": 0}})
    assert_error_shape(bad, 400)


def test_tpm_estimate_reserves_the_completion_once_per_choice(
    http: httpx.Client, tenant: Tenant
) -> None:
    admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"tpm_limit": 100_000})
    time.sleep(1.2)  # auth cache
    one = chat(http, tenant.key, max_tokens=1000)
    four = chat(http, tenant.key, max_tokens=1000, n=4)
    assert one.status_code == four.status_code == 200
    left_one = int(one.headers["x-ratelimit-remaining-tokens"])
    left_four = int(four.headers["x-ratelimit-remaining-tokens"])
    # the first charge is prompt + 1000; the second alone is prompt + 4 x 1000 (whether or not
    # the first has been reconciled with its real usage by then)
    assert 1000 < 100_000 - left_one < 2000
    assert 100_000 - left_four >= 4000


def test_two_anonymous_clients_saying_hi_get_two_threads(
    http: httpx.Client, tenant: Tenant
) -> None:
    created = admin(http, "POST", "/admin/keys", json={"workspace": tenant.name, "name": "b"})
    assert created.status_code == 201, created.text
    other_key = created.json()["key"]
    hi = [{"role": "user", "content": "hi"}]
    on = {"X-Memory": "on"}
    first = chat(http, tenant.key, headers=on, messages=hi)
    second = chat(http, other_key, headers=on, messages=hi)
    assert first.status_code == second.status_code == 200
    thread_a, thread_b = first.headers["x-memory-thread"], second.headers["x-memory-thread"]
    assert thread_a.startswith("fp_") and thread_b.startswith("fp_") and thread_a != thread_b
    # the same client resending its history stays in its thread
    history = [*hi, {"role": "assistant", "content": "echo: hi"}, {"role": "user", "content": "ok"}]
    again = chat(http, tenant.key, headers=on, messages=history)
    assert again.headers["x-memory-thread"] == thread_a
    # with a `user`, the end user's threads are shared by the workspace's keys, as documented
    user = f"u-{uuid.uuid4().hex[:8]}"
    by_a = chat(http, tenant.key, headers=on, messages=hi, user=user)
    by_b = chat(http, other_key, headers=on, messages=hi, user=user)
    assert by_a.headers["x-memory-thread"] == by_b.headers["x-memory-thread"]
