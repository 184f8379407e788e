"""Rate limits shared by replicas, OpenAI rate-limit headers, fail-open, metrics, logs, usage."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import local_services
from tests.conftest import (
    MASTER_KEY,
    Gateway,
    Services,
    Tenant,
    gateway_env,
    make_tenant,
    own_services,
    usage_rows,
)
from tests.gateway.surfaces.test_errors import assert_error_shape
from tests.mock_upstream import MockUpstream

USER = [{"role": "user", "content": "count me"}]
OFF = {"X-Memory": "off"}


def admin(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return http.request(method, path, headers={"Authorization": f"Bearer {MASTER_KEY}"}, **kwargs)


@pytest.fixture(scope="module")
def second_gateway(
    services: Services,
    mock: MockUpstream,
    providers: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    gw = Gateway(gateway_env(services, mock, providers), tmp_path_factory.mktemp("gw2") / "gw.log")
    try:
        yield gw
    finally:
        gw.stop()


def test_rpm_limit_is_shared_by_two_replicas_with_openai_headers(
    gateway: Gateway, second_gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    assert (
        admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"rpm_limit": 4}).status_code
        == 200
    )
    replicas = [gateway, second_gateway]
    seen = []
    for i in range(4):
        with replicas[i % 2].client(tenant.key) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="mock/gpt", messages=USER, extra_headers=OFF
            )
            seen.append(raw.headers)
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["3", "2", "1", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "4" for h in seen)
    assert all(h["x-ratelimit-reset-requests"].endswith("s") for h in seen)
    for replica in replicas:
        with replica.client(tenant.key) as client, pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="mock/gpt", messages=USER, extra_headers=OFF)
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert info.value.code == "rate_limit_exceeded"  # type: ignore[attr-defined]


def test_tpm_limit_counts_prompt_and_max_tokens(
    gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"tpm_limit": 600})
    with gateway.client(tenant.key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="mock/gpt", messages=USER, max_tokens=100, extra_headers=OFF
        )
        assert raw.headers["x-ratelimit-limit-tokens"] == "600"
        assert 400 < int(raw.headers["x-ratelimit-remaining-tokens"]) < 600
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="mock/gpt", messages=USER, max_tokens=1000, extra_headers=OFF
            )


def test_tpm_charge_is_reconciled_with_the_real_usage(
    gateway: Gateway, http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    """Charged up front: prompt + max_tokens; once reconciled, only what the provider reported."""
    from redis import Redis

    admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"tpm_limit": 100_000})
    with gateway.client(tenant.key) as client, Redis.from_url(services.redis_url) as redis:
        for _ in range(3):  # a minute boundary between the two requests blurs the window
            minute = int(time.time() // 60)
            first = client.chat.completions.with_raw_response.create(
                model="mock/gpt", messages=USER, max_tokens=5000, extra_headers=OFF
            )
            actual = first.parse().usage
            assert actual is not None
            charged = 100_000 - int(first.headers["x-ratelimit-remaining-tokens"])
            assert charged > 5000 > actual.total_tokens  # the estimate, not the usage
            window = f"cmg:rl:key:{tenant.key_id}:{minute}"
            deadline = time.monotonic() + 20  # reconciliations are written in batches
            while time.monotonic() < deadline:
                held = int(redis.hget(window, "t") or 0)  # type: ignore[arg-type]
                if held != charged:
                    break
                time.sleep(0.05)
            second = client.chat.completions.with_raw_response.create(
                model="mock/gpt", messages=USER, max_tokens=5000, extra_headers=OFF
            )
            if int(time.time() // 60) == minute:
                break
    assert held == actual.total_tokens
    # the second request's estimate equals the first's, so the drop in what is left is what
    # the first request holds in the window: its real usage
    drop = int(first.headers["x-ratelimit-remaining-tokens"]) - int(
        second.headers["x-ratelimit-remaining-tokens"]
    )
    assert abs(drop - actual.total_tokens) <= 1, (drop, actual.total_tokens, charged)


def test_workspace_limit_applies_across_its_keys(
    gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    admin(http, "PATCH", f"/admin/workspaces/{tenant.name}", json={"settings": {"rpm": 2}})
    other = admin(http, "POST", "/admin/keys", json={"workspace": tenant.name}).json()["key"]
    with gateway.client(tenant.key) as a, gateway.client(other) as b:
        a.chat.completions.create(model="mock/gpt", messages=USER, extra_headers=OFF)
        b.chat.completions.create(model="mock/gpt", messages=USER, extra_headers=OFF)
        with pytest.raises(openai.RateLimitError):
            a.chat.completions.create(model="mock/gpt", messages=USER, extra_headers=OFF)


def test_limiter_fails_open_when_redis_is_down(
    services: Services, mock: MockUpstream, providers: Path, tmp_path: Path
) -> None:
    # A Redis of its own, so a database of its own too: the outbox is per database, and this
    # gateway's relay would push other tests' pending jobs to a Redis that is then stopped.
    redis = local_services.start_redis(tmp_path / "own-redis")
    with own_services(services, redis.url) as mine:
        tenant = make_tenant(mine)
        gw = Gateway(gateway_env(mine, mock, providers), tmp_path / "gw.log")
        try:
            with httpx.Client(base_url=gw.url) as http:
                admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"rpm_limit": 1})
                redis.stop()
                with gw.client(tenant.key) as client:
                    for _ in range(3):  # over the limit, but the limiter cannot be asked
                        client.chat.completions.create(
                            model="mock/gpt", messages=USER, extra_headers=OFF
                        )
                text = http.get("/metrics").text
            assert _sample(text, "cmg_ratelimit_fail_open_total") >= 3
        finally:
            gw.stop()


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_metrics_series_after_traffic(
    gateway: Gateway, http: httpx.Client, tenant: Tenant, mock: MockUpstream
) -> None:
    with gateway.client(tenant.key) as client:
        client.chat.completions.create(model="mock/gpt", messages=USER, extra_headers=OFF)
        list(client.chat.completions.create(model="mock/gpt", messages=USER, stream=True))
        with pytest.raises(openai.AuthenticationError):
            gateway.client("cmg_nope").models.list()
    text = http.get("/metrics").text
    families = {f.name for f in text_string_to_metric_families(text)}
    for name in (
        "cmg_requests", "cmg_request_duration_seconds", "cmg_upstream_duration_seconds",
        "cmg_time_to_first_token_seconds", "cmg_gateway_overhead_seconds", "cmg_tokens",
        "cmg_memory_recall_duration_seconds", "cmg_auth_failures", "cmg_cost_usd",
    ):  # fmt: skip
        assert name in families, name
    assert (
        _sample(
            text,
            "cmg_requests_total",
            route="chat",
            status="200",
            model="mock/gpt",
            provider="openrouter",
        )
        >= 2
    )
    assert _sample(text, "cmg_tokens_total", model="mock/gpt", direction="completion") > 0
    assert _sample(text, "cmg_auth_failures_total", code="invalid_api_key") >= 1


def test_usage_is_accounted_in_tokens_and_dollars(
    gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    with gateway.client(tenant.key) as client:
        for _ in range(3):
            client.chat.completions.create(model="mock/gpt", messages=USER, extra_headers=OFF)
    data = usage_rows(http, tenant, 3, group_by="model")
    assert data[0]["requests"] == 3
    row = data[0]
    assert row["model"] == "mock/gpt" and row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    expected = row["prompt_tokens"] * 0.000001 + row["completion_tokens"] * 0.000002
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-6)
    by_key = admin(
        http, "GET", "/admin/usage", params={"workspace": tenant.name, "group_by": "key"}
    ).json()
    assert by_key["data"][0]["key"] == tenant.key_id and by_key["data"][0]["requests"] == 3


def test_monthly_budget_gives_insufficient_quota(
    gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    admin(
        http,
        "PATCH",
        f"/admin/workspaces/{tenant.name}",
        json={"settings": {"monthly_budget_usd": 0.000001}},
    )
    with gateway.client(tenant.key) as client:
        client.chat.completions.create(model="mock/gpt", messages=USER, extra_headers=OFF)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="mock/gpt", messages=USER, extra_headers=OFF)
    assert info.value.code == "insufficient_quota"  # type: ignore[attr-defined]
    assert info.value.body["type"] == "insufficient_quota"  # type: ignore[index]


def test_log_lines_are_json_without_secrets_or_content(gateway: Gateway, tenant: Tenant) -> None:
    secret_text = f"my private words {uuid.uuid4().hex}"
    request_id = f"log-{uuid.uuid4().hex}"
    with gateway.client(tenant.key) as client:
        client.chat.completions.create(
            model="mock/gpt", messages=[{"role": "user", "content": secret_text}],
            extra_headers={"X-Request-Id": request_id},
        )  # fmt: skip
    deadline = time.monotonic() + 5
    while request_id not in gateway.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [
        orjson.loads(line)
        for line in gateway.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert len(mine) == 1
    entry = mine[0]
    for field in ("workspace", "key_id", "model", "provider", "status", "latency_ms", "upstream_ms",
                  "prompt_tokens", "completion_tokens", "memory_items", "attempts"):  # fmt: skip
        assert field in entry, field
    assert entry["status"] == 200 and entry["model"] == "mock/gpt"
    whole = gateway.log_path.read_text()
    assert tenant.key not in whole and secret_text not in whole


def test_detailed_health_needs_the_master_key(http: httpx.Client, tenant: Tenant) -> None:
    assert_error_shape(
        http.get("/admin/health", headers={"Authorization": f"Bearer {tenant.key}"}), 401
    )
    body = admin(http, "GET", "/admin/health").json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "redis", "embedder"}
    assert all(c["ok"] and c["latency_ms"] >= 0 for c in body["checks"].values())


def test_worker_exports_job_metrics_on_its_port(
    worker: Any, http: httpx.Client, tenant: Tenant
) -> None:
    added = http.post(
        "/v1/memory/items?wait=true", json={"items": [{"content": "metrics for the worker"}]},
        headers={"Authorization": f"Bearer {tenant.key}"}, timeout=60,
    )  # fmt: skip
    assert added.json()["searchable"] is True
    text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
    assert _sample(text, "cmg_job_duration_seconds_count", job="embed_items") >= 1


def test_queue_and_outbox_gauges_are_exported(http: httpx.Client) -> None:
    families = {f.name for f in text_string_to_metric_families(http.get("/metrics").text)}
    assert {"cmg_rq_queue_depth", "cmg_outbox_backlog", "cmg_outbox_oldest_age_seconds"} <= families


def test_retries_fallbacks_and_upstream_errors_are_counted(
    gateway: Gateway, http: httpx.Client, tenant: Tenant, mock: MockUpstream, unique: str
) -> None:
    from tests.mock_upstream import Reply

    before = http.get("/metrics").text
    mock.script(unique, Reply.error(502))
    mock.script("flaky", Reply.error(500), Reply.error(500))
    with gateway.client(tenant.key) as client:
        client.chat.completions.create(model=f"alt/{unique}", messages=USER, extra_headers=OFF)
        client.chat.completions.create(model="alt/flaky", messages=USER, extra_headers=OFF)
    after = http.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert grew("cmg_upstream_retries_total", provider="alt") >= 2
    assert grew("cmg_upstream_errors_total", provider="alt", kind="5xx") >= 3
    assert grew("cmg_upstream_fallbacks_total", provider="alt") >= 1
