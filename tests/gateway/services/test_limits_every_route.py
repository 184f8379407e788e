"""Limits on every route: RPM, TPM and the budget on embeddings and the memory API, embeddings
usage accounted, ``wait=true`` bounded, ``/metrics`` behind a token, ``/readyz`` terse."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError

from gateway.ops import local_services
from tests.conftest import (
    MASTER_KEY,
    Gateway,
    Services,
    Tenant,
    gateway_env,
    make_tenant,
    own_services,
)
from tests.gateway.surfaces.test_errors import assert_error_shape
from tests.mock_upstream import MockUpstream

METRICS_TOKEN = "metrics-token-for-tests"
REDIS_PASSWORD = "redis-password-for-tests"
USER = [{"role": "user", "content": "count me"}]


def _admin(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return http.request(method, path, headers={"Authorization": f"Bearer {MASTER_KEY}"}, **kwargs)


def _auth(tenant: Tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def _chat(http: httpx.Client, tenant: Tenant) -> httpx.Response:
    body = {"model": "mock/gpt", "messages": USER}
    return http.post(
        "/v1/chat/completions", json=body, headers={**_auth(tenant), "X-Memory": "off"}
    )


def _embed(http: httpx.Client, tenant: Tenant) -> httpx.Response:
    body = {"model": "mock/gpt", "input": ["one two three", "four five"]}
    return http.post("/v1/embeddings", json=body, headers=_auth(tenant))


def _search(http: httpx.Client, tenant: Tenant) -> httpx.Response:
    return http.get("/v1/memory/search", params={"q": "hello"}, headers=_auth(tenant))


def _add(http: httpx.Client, tenant: Tenant) -> httpx.Response:
    body = {"items": [{"content": "the limits test was here"}]}
    return http.post("/v1/memory/items", json=body, headers=_auth(tenant))


ROUTES: dict[str, Callable[[httpx.Client, Tenant], httpx.Response]] = {
    "chat": _chat,
    "embeddings": _embed,
    "memory search": _search,
    "memory add": _add,
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_key_at_rpm_2_gets_429_on_every_route(
    route: str, http: httpx.Client, services: Services
) -> None:
    tenant = make_tenant(services)
    assert _admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"rpm_limit": 2}).is_success
    call = ROUTES[route]
    first, second = call(http, tenant), call(http, tenant)
    assert first.is_success and second.is_success, (first.text, second.text)
    refused = call(http, tenant)
    error = assert_error_shape(refused, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1


def test_one_request_budget_is_shared_by_all_routes(http: httpx.Client, services: Services) -> None:
    tenant = make_tenant(services)
    _admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"rpm_limit": 3})
    assert _chat(http, tenant).is_success
    assert _embed(http, tenant).is_success
    assert _search(http, tenant).is_success
    for call in ROUTES.values():  # the minute's 3 requests are gone, whichever route asks
        assert assert_error_shape(call(http, tenant), 429)["code"] == "rate_limit_exceeded"


def test_embeddings_are_charged_their_input_tokens_against_tpm(
    http: httpx.Client, services: Services
) -> None:
    tenant = make_tenant(services)
    _admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"tpm_limit": 60})
    small = _embed(http, tenant)
    assert small.status_code == 200
    assert small.headers["x-ratelimit-limit-tokens"] == "60"
    assert 40 < int(small.headers["x-ratelimit-remaining-tokens"]) < 60
    body = {"model": "mock/gpt", "input": "word " * 200}
    refused = http.post("/v1/embeddings", json=body, headers=_auth(tenant))
    error = assert_error_shape(refused, 429)
    assert error["code"] == "rate_limit_exceeded" and "tokens per minute" in str(error["message"])


def test_embeddings_usage_is_recorded_costed_and_apart_from_chat(
    http: httpx.Client, tenant: Tenant
) -> None:
    for _ in range(2):
        assert _embed(http, tenant).status_code == 200
    assert _chat(http, tenant).status_code == 200
    deadline = time.monotonic() + 10
    while True:
        usage = http.get("/v1/usage", params={"group_by": "route"}, headers=_auth(tenant))
        rows = {row["route"]: row for row in usage.json()["data"]}
        if rows.get("embeddings", {}).get("requests") == 2 and "chat" in rows:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    embeddings = rows["embeddings"]
    # the mock reports one token per word: "one two three" + "four five" = 5, twice
    assert embeddings["prompt_tokens"] == 10 and embeddings["completion_tokens"] == 0
    assert embeddings["cost_usd"] == pytest.approx(10 * 0.000001, rel=1e-6)  # mock/gpt's price
    assert rows["chat"]["requests"] == 1 and rows["chat"]["completion_tokens"] > 0
    by_model = http.get("/v1/usage", params={"group_by": "model"}, headers=_auth(tenant)).json()
    assert [row["requests"] for row in by_model["data"]] == [3]  # one model, both routes


def test_budget_closes_embeddings_and_memory_but_not_deletes(
    http: httpx.Client, tenant: Tenant
) -> None:
    settings = {"settings": {"monthly_budget_usd": 0.000001}}
    _admin(http, "PATCH", f"/admin/workspaces/{tenant.name}", json=settings)
    assert _embed(http, tenant).status_code == 200  # spends 5 tokens at $0.000001
    for call in (_embed, _search, _add, _chat):
        assert assert_error_shape(call(http, tenant), 429)["code"] == "insufficient_quota"
    forgotten = http.delete("/v1/memory/users/someone", headers=_auth(tenant))
    assert forgotten.status_code == 200, forgotten.text


@dataclass
class Closed:
    gateway: Gateway
    services: Services  # its own database: see below


@pytest.fixture(scope="module")
def closed(
    services: Services,
    mock: MockUpstream,
    providers: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Closed]:
    """A gateway with a metrics token, a 1 s memory wait and a Redis of its own that requires a
    password (no worker listens there, so nothing it stores gets embedded). The limiter does
    not fail open, so a Redis refusing the gateway would show as 503s. Its database is its own
    too: the outbox is per database, and the session gateway's relay would otherwise push this
    gateway's jobs to the session worker (``own_database``)."""
    redis = local_services.start_redis(tmp_path_factory.mktemp("locked-redis"))
    with Redis.from_url(redis.url) as admin:
        admin.config_set("requirepass", REDIS_PASSWORD)
    locked = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0"
    with own_services(services, locked) as mine:
        env = gateway_env(
            mine, mock, providers, CMG_RATELIMIT_FAIL_OPEN="false",
            CMG_METRICS_TOKEN=METRICS_TOKEN, CMG_MEMORY_WAIT_SECONDS="1",
        )  # fmt: skip
        gw = Gateway(env, tmp_path_factory.mktemp("closed") / "gw.log")
        try:
            yield Closed(gw, mine)
        finally:
            gw.stop()
            redis.stop()


def test_a_redis_with_a_password_serves_limits_and_readiness(closed: Closed) -> None:
    tenant = make_tenant(closed.services)
    with httpx.Client(base_url=closed.gateway.url, timeout=10) as http:
        assert _admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"rpm_limit": 1})
        assert _embed(http, tenant).status_code == 200
        assert assert_error_shape(_search(http, tenant), 429)["code"] == "rate_limit_exceeded"
        assert http.get("/readyz").json()["checks"]["redis"] == {"ok": True}
    with pytest.raises(AuthenticationError):  # and it is closed to anyone without it
        Redis(port=urlsplit(closed.gateway.env["REDIS_URL"]).port).get("x")


def test_wait_true_gives_up_at_the_configured_maximum_with_a_clear_answer(closed: Closed) -> None:
    tenant = make_tenant(closed.services)
    body = {"items": [{"content": "never embedded here"}, {"content": "nor this"}]}
    with httpx.Client(base_url=closed.gateway.url, timeout=30) as http:
        for wait in ("true", "60"):  # asking for more than the maximum gets the maximum
            added = http.post(
                "/v1/memory/items", params={"wait": wait}, json=body, headers=_auth(tenant)
            )
            assert added.status_code == 202, added.text
            answer = added.json()
            assert answer["searchable"] is False and answer["pending"] == 2
            assert len(answer["data"]) == 2 and "within 1 s" in answer["message"]
        bad = http.post(
            "/v1/memory/items", params={"wait": "soon"}, json=body, headers=_auth(tenant)
        )
        assert assert_error_shape(bad, 400)["param"] == "wait"


def test_metrics_need_the_token_when_one_is_set(closed: Closed) -> None:
    with httpx.Client(base_url=closed.gateway.url) as http:
        assert assert_error_shape(http.get("/metrics"), 401)["code"] == "invalid_metrics_token"
        wrong = http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert assert_error_shape(wrong, 401)["code"] == "invalid_metrics_token"
        scraped = http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200 and "cmg_requests_total" in scraped.text


def test_readyz_says_only_up_or_down(http: httpx.Client) -> None:
    body = http.get("/readyz").json()
    assert body == {
        "status": "ready",
        "checks": {"database": {"ok": True}, "redis": {"ok": True}, "embedder": {"ok": True}},
    }


def test_embedding_input_tokens_count_every_shape_openai_accepts() -> None:
    from gateway.surfaces.embeddings import input_tokens

    assert input_tokens("hello world", "gpt-4o") == 2
    assert input_tokens(["hello world", "again"], "gpt-4o") == 3
    assert input_tokens([1, 2, 3], "gpt-4o") == 3
    assert input_tokens([[1, 2], [3]], "gpt-4o") == 3
    deep: Any = [1]
    for _ in range(5000):  # no recursion: odd shapes count nothing, the provider refuses them
        deep = [deep]
    assert input_tokens(deep, "gpt-4o") == 0 and input_tokens({"a": 1}, "gpt-4o") == 0
