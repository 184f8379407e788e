"""Change notices: two replicas on one PostgreSQL and Redis, each caching keys for 60 s, agree
on every change within a poll of a few seconds; with the notice channel down, the cache lifetime
still expires entries; an empty catalog is synced once at start."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest

from gateway.ops import local_services
from gateway.services.auth import KeyCache
from gateway.services.workspaces import KeyRecord
from tests.conftest import (
    MASTER_KEY,
    ROOT,
    Gateway,
    Services,
    Tenant,
    gateway_env,
    make_tenant,
    own_database,
    providers_file,
)
from tests.mock_upstream import MockUpstream

POLL = 5.0  # seconds a change may take to show: far below the 60 s cache lifetime
USER = [{"role": "user", "content": "hello"}]


@dataclass
class Fleet:
    a: Gateway
    b: Gateway
    services: Services
    mock: MockUpstream
    env: dict[str, str]
    logs: Path

    def tenant(self) -> Tenant:
        return make_tenant(self.services)


@pytest.fixture(scope="module")
def fleet(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Replicas A and B, started together on a database of their own with an empty catalog."""
    tmp = tmp_path_factory.mktemp("fleet")
    with own_database(services) as url, MockUpstream() as mock:
        redis = local_services.start_redis(tmp / "redis")
        try:
            own = Services(url, redis.url, services.data_dir)
            env = gateway_env(
                own, mock, providers_file(tmp / "providers.toml", mock),
                CMG_AUTH_CACHE_SECONDS="60", CMG_CATALOG_REFRESH_SECONDS="60",
            )  # fmt: skip
            with ThreadPoolExecutor(2) as pool:
                started = [pool.submit(Gateway, env, tmp / f"{name}.log") for name in "ab"]
                a, b = (future.result() for future in started)
            try:
                yield Fleet(a, b, own, mock, env, tmp)
            finally:
                a.stop()
                b.stop()
        finally:
            redis.stop()


def poll(check: Callable[[], bool], timeout: float = POLL) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    response = httpx.request(method, gw.url + path, headers=headers, timeout=10, **kwargs)
    assert response.status_code < 300, response.text
    return response


def models(gw: Gateway, key: str) -> httpx.Response:
    return httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)


def rpm_header(gw: Gateway, key: str) -> str | None:
    with gw.client(key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="mock/gpt", messages=USER, extra_headers={"X-Memory": "off"}
        )
    return raw.headers.get("x-ratelimit-limit-requests")


def metric(gw: Gateway, name: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_an_empty_catalog_is_synced_once_at_start_by_one_replica(fleet: Fleet) -> None:
    key = fleet.tenant().key
    for gw in (fleet.a, fleet.b):
        ids = {m["id"] for m in models(gw, key).json()["data"]}
        assert "mock/gpt" in ids
    assert len([r for r in fleet.mock.requests if r.path == "/v1/models"]) == 1


def test_an_unreachable_provider_does_not_stop_startup(services: Services, tmp_path: Path) -> None:
    with own_database(services) as url, MockUpstream() as mock:
        env = gateway_env(
            Services(url, services.redis_url, services.data_dir), mock,
            providers_file(tmp_path / "providers.toml", mock),
            OPENROUTER_BASE_URL=f"http://127.0.0.1:{local_services.free_port()}/v1",
        )  # fmt: skip
        gw = Gateway(env, tmp_path / "gw.log")  # waits for /healthz
        try:
            key = make_tenant(Services(url, services.redis_url, services.data_dir)).key
            assert models(gw, key).json()["data"] == []
        finally:
            gw.stop()
    assert "catalog sync of openrouter failed" in gw.log_path.read_text()


def test_a_key_revoked_on_one_replica_is_refused_by_the_other_at_once(fleet: Fleet) -> None:
    tenant = fleet.tenant()
    assert models(fleet.b, tenant.key).status_code == 200  # B now holds the key for 60 s
    heard = metric(fleet.b, 'cmg_change_notices_total{table="api_keys"}')
    admin(fleet.a, "POST", f"/admin/keys/{tenant.key_id}/revoke")
    assert poll(lambda: models(fleet.b, tenant.key).status_code == 401)
    assert metric(fleet.b, 'cmg_change_notices_total{table="api_keys"}') > heard
    assert models(fleet.b, tenant.key).json()["error"]["code"] == "revoked_api_key"


def test_key_limits_changed_on_one_replica_apply_on_the_other(fleet: Fleet) -> None:
    tenant = fleet.tenant()
    assert rpm_header(fleet.b, tenant.key) is None  # cached without limits
    admin(fleet.a, "PATCH", f"/admin/keys/{tenant.key_id}", json={"rpm_limit": 777})
    assert poll(lambda: rpm_header(fleet.b, tenant.key) == "777")


def test_a_workspace_setting_changed_on_one_replica_applies_on_the_other(fleet: Fleet) -> None:
    tenant = fleet.tenant()
    assert rpm_header(fleet.b, tenant.key) is None
    admin(fleet.a, "PATCH", f"/admin/workspaces/{tenant.name}", json={"settings": {"rpm": 4321}})
    assert poll(lambda: rpm_header(fleet.b, tenant.key) == "4321")


def test_a_key_revoked_in_sql_by_an_operator_is_refused_by_every_replica(fleet: Fleet) -> None:
    tenant = fleet.tenant()
    for gw in (fleet.a, fleet.b):
        assert models(gw, tenant.key).status_code == 200
    with psycopg.connect(fleet.services.database_url) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (tenant.key_id,))
    for gw in (fleet.a, fleet.b):
        assert poll(lambda gw=gw: models(gw, tenant.key).status_code == 401)  # type: ignore[misc]


def test_catalog_sync_reaches_every_replica(fleet: Fleet) -> None:
    key = fleet.tenant().key
    fresh = f"mock/fresh-{uuid.uuid4().hex[:8]}"
    fleet.mock.models.append({**fleet.mock.models[0], "id": fresh})
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "catalog", "sync"],
        env=fleet.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for gw in (fleet.a, fleet.b):
        assert poll(lambda gw=gw: fresh in models(gw, key).text)  # type: ignore[misc]


def test_with_the_channel_down_the_cache_lifetime_still_expires_keys(fleet: Fleet) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{local_services.free_port()}/cmg"
    env = {**fleet.env, "CMG_NOTICE_URL": closed, "CMG_AUTH_CACHE_SECONDS": "3"}
    c = Gateway(env, fleet.logs / "c.log")
    try:
        tenant = fleet.tenant()
        assert models(c, tenant.key).status_code == 200
        assert metric(c, "cmg_notice_channel_up") == 0
        assert metric(c, "cmg_notice_reconnects_total") >= 1
        health = admin(c, "GET", "/admin/health").json()
        assert health["change_notices"].startswith("down")
        assert admin(fleet.b, "GET", "/admin/health").json()["change_notices"] == "listening"
        admin(fleet.a, "POST", f"/admin/keys/{tenant.key_id}/revoke")
        assert poll(lambda: models(c, tenant.key).status_code == 401, timeout=30)
    finally:
        c.stop()
    assert "change notices unavailable" in c.log_path.read_text()


def test_a_killed_listener_reconnects_and_notices_flow_again(fleet: Fleet) -> None:
    before = metric(fleet.b, "cmg_notice_reconnects_total")
    with psycopg.connect(fleet.services.database_url, autocommit=True) as conn:
        listeners = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'cmg-notices' "
            "AND datname = current_database()"
        ).fetchall()
        for (pid,) in listeners:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert len(listeners) == 2  # one listener per replica
    assert poll(lambda: metric(fleet.b, "cmg_notice_reconnects_total") > before)
    assert poll(lambda: metric(fleet.b, "cmg_notice_channel_up") == 1)
    tenant = fleet.tenant()
    assert models(fleet.b, tenant.key).status_code == 200
    admin(fleet.a, "POST", f"/admin/keys/{tenant.key_id}/revoke")
    assert poll(lambda: models(fleet.b, tenant.key).status_code == 401)


def _record() -> KeyRecord:
    return KeyRecord("k", "w", "ws", {}, None, False)


def test_cached_keys_outlive_their_lifetime_only_while_notices_flow() -> None:
    calls: list[str] = []
    up = True

    async def lookup(key_hash: str) -> KeyRecord:
        calls.append(key_hash)
        return _record()

    async def scenario() -> None:
        nonlocal up
        cache = KeyCache(lookup, ttl=0.0, live=lambda: up)
        await cache.resolve("cmg_x")
        await cache.resolve("cmg_x")
        assert len(calls) == 1  # channel up: the entry stays until a notice
        up = False
        await cache.resolve("cmg_x")
        assert len(calls) == 2  # channel down: the (zero) lifetime applies
        up = True
        cache.forget()
        await cache.resolve("cmg_x")
        assert len(calls) == 3  # a notice drops it

    asyncio.run(scenario())


def test_a_notice_during_a_lookup_keeps_that_row_out_of_the_cache() -> None:
    calls: list[str] = []

    async def lookup(key_hash: str) -> KeyRecord:
        calls.append(key_hash)
        if len(calls) == 1:
            cache.forget()  # the change commits while this (older) row is on its way
        return _record()

    cache = KeyCache(lookup, ttl=60.0, live=lambda: True)

    async def scenario() -> None:
        for _ in range(3):
            await cache.resolve("cmg_x")

    asyncio.run(scenario())
    assert len(calls) == 2  # re-read once after the notice, then cached
