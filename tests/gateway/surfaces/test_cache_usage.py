"""Cost that counts the provider's cache, and memory's own share, in usage rows and metrics.

The mock upstream reports a body field ``mock_cached_tokens`` back as
``usage.prompt_tokens_details.cached_tokens``; its catalog lists a cached-input price for
``mock/gpt`` (OpenRouter's ``input_cache_read``) and none for ``mock/tool``.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.services.catalog import Price
from tests.conftest import Gateway, Services, Tenant, make_tenant, usage_rows
from tests.memory.test_chat_memory import wait_embedded

OFF = {"X-Memory": "off"}


def sample(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_cached_tokens_cost_the_cached_price_when_the_catalog_lists_one(
    gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    with gateway.client(tenant.key) as client:
        answer = client.chat.completions.create(
            model="mock/gpt", messages=[{"role": "user", "content": "word " * 400}],
            extra_headers=OFF, extra_body={"mock_cached_tokens": 300},
        )  # fmt: skip
    assert answer.usage is not None
    prompt, completion = answer.usage.prompt_tokens, answer.usage.completion_tokens
    (row,) = usage_rows(http, tenant, 1)
    assert row["key"] == tenant.key_id and row["model"] == "mock/gpt"
    assert row["cached_tokens"] == 300
    expected = (prompt - 300) * 1e-6 + 300 * 1e-7 + completion * 2e-6
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert row["cost_usd"] < (prompt * 1e-6 + completion * 2e-6)


@pytest.mark.parametrize("cached", [300, -50, "300", 10**9, True, None])
def test_unknown_price_or_odd_cached_figures_cost_the_normal_price(
    gateway: Gateway, http: httpx.Client, services: Services, cached: Any
) -> None:
    tenant = make_tenant(services)
    with gateway.client(tenant.key) as client:
        answer = client.chat.completions.create(
            model="mock/tool", messages=[{"role": "user", "content": "word " * 400}],
            extra_headers=OFF, extra_body={"mock_cached_tokens": cached},
        )  # fmt: skip
    assert answer.usage is not None
    prompt, completion = answer.usage.prompt_tokens, answer.usage.completion_tokens
    (row,) = usage_rows(http, tenant, 1)
    # mock/tool lists no cached price: cached tokens cost what any prompt token costs
    assert row["cost_usd"] == pytest.approx(prompt * 2e-6 + completion * 4e-6, rel=1e-6)
    assert 0 <= row["cached_tokens"] <= prompt
    assert row["cached_tokens"] == (cached if cached == 300 else prompt if cached == 10**9 else 0)


def test_price_cost_is_never_negative() -> None:
    price = Price(Decimal("0.000001"), Decimal("0.000002"), Decimal("0.0000001"))
    assert price.cost(100, 10, 1000) == Decimal("0.00003")  # cached capped at the prompt
    assert price.cost(-5, -5, -5) == 0
    assert Price(Decimal("0.000001"), Decimal(0)).cost(100, 0, 40) == Decimal("0.0001")


def test_usage_and_metrics_count_cached_and_memory_tokens(
    gateway: Gateway, http: httpx.Client, services: Services, worker: Any
) -> None:
    tenant = make_tenant(services)
    marker = uuid.uuid4().hex[:8]
    before = http.get("/metrics").text
    with gateway.client(tenant.key) as client:
        seed = f"seed-{marker}"
        client.chat.completions.create(
            model="mock/gpt",
            messages=[{"role": "user", "content": "The Quokka release ships on Fridays."}],
            extra_headers={"X-Thread-Id": seed},
        )
        wait_embedded(http, tenant.key, seed, 2)
        raw = client.chat.completions.with_raw_response.create(
            model="mock/gpt",
            messages=[
                {"role": "system", "content": "Answer briefly. " * 200},
                {"role": "user", "content": f"When does the Quokka release ship? {marker}"},
            ],
            extra_headers={"X-Thread-Id": f"ask-{marker}"},
            extra_body={"mock_cached_tokens": 7},
        )
    memory = int(raw.headers["x-memory-tokens"])
    assert memory > 0
    rows = usage_rows(http, tenant, 2)
    (row,) = rows  # both requests: one key, one model
    assert row["memory_tokens"] == memory and row["cached_tokens"] == 7
    assert row["memory_cost_usd"] == pytest.approx(memory * 1e-6, rel=1e-6)
    assert 0 < row["memory_cost_usd"] < row["cost_usd"]
    after = http.get("/metrics").text
    for direction, count in (("cached", 7), ("memory", memory)):
        labels = {"model": "mock/gpt", "direction": direction}
        grown = sample(after, "cmg_tokens_total", **labels) - sample(
            before, "cmg_tokens_total", **labels
        )
        assert grown >= count, direction
    grown_cost = sample(after, "cmg_memory_cost_usd_total", model="mock/gpt") - sample(
        before, "cmg_memory_cost_usd_total", model="mock/gpt"
    )
    assert grown_cost >= memory * 1e-6 * 0.999


def test_group_by_must_name_known_groups(http: httpx.Client, tenant: Tenant) -> None:
    for bad in ("key,key", "model,", "tenant", ""):
        response = http.get(
            "/v1/usage", params={"group_by": bad}, headers={"Authorization": f"Bearer {tenant.key}"}
        )
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == "group_by"
