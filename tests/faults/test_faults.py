"""Faults with real processes: Postgres restarted under traffic, Redis killed and restarted,
a gateway killed right after answering. Each test asserts what the client saw and what is
stored. Each uses its own PostgreSQL or Redis so the session's stay untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import text

from gateway.ops import local_services
from gateway.services import workspaces
from memory import migrate
from memory.db import run_transaction
from tests.conftest import (
    ROOT,
    Gateway,
    Services,
    gateway_env,
    make_tenant,
    own_database,
    stop_group,
)
from tests.mock_upstream import MockUpstream


@dataclass
class Stack:
    pg: local_services.EmbeddedPostgres
    data_dir: Path
    key: str
    services: Services


def _db(url: str, work: Any) -> Any:
    return run_transaction(url, work)


@pytest.fixture
def own_pg(tmp_path: Path, services: Services) -> Iterator[Stack]:
    data_dir = tmp_path / "pg-data"
    pg = local_services.start_postgres(data_dir)
    migrate.upgrade(pg.url)

    async def tenant(session: Any) -> str:
        await workspaces.create_workspace(session, "faults")
        secret, _ = await workspaces.create_key(session, "faults")
        return secret

    key = _db(pg.url, tenant)
    try:
        yield Stack(pg, data_dir, key, Services(pg.url, services.redis_url, data_dir))
    finally:
        pg.stop()


def _count_messages(url: str, thread_prefix: str) -> dict[str, int]:
    async def work(session: Any) -> dict[str, int]:
        rows = await session.execute(
            text("SELECT thread_id, count(*) FROM memory_items WHERE thread_id LIKE :p GROUP BY 1"),
            {"p": thread_prefix + "%"},
        )
        return {r[0]: int(r[1]) for r in rows}

    return dict(_db(url, work))


def _post(client: httpx.Client, key: str, thread: str, memory: str = "on") -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": "mock/gpt", "messages": [{"role": "user", "content": f"turn {thread}"}]},
        headers={"Authorization": f"Bearer {key}", "X-Thread-Id": thread, "X-Memory": memory},
        timeout=30,
    )


def test_postgres_restart_under_traffic_gives_200_or_clean_503_and_loses_nothing(
    own_pg: Stack, mock: MockUpstream, providers: Path, tmp_path: Path
) -> None:
    gw = Gateway(
        gateway_env(own_pg.services, mock, providers, CMG_AUTH_CACHE_SECONDS="30"),
        tmp_path / "gw.log",
    )
    prefix = f"pgr-{uuid.uuid4().hex[:6]}-"
    outcomes: list[tuple[str, int, Any]] = []
    searches: list[tuple[int, Any]] = []  # the memory API reads the database on every call
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=gw.url) as client:
            i = 0
            while not stop.is_set():
                thread = f"{prefix}{i}"
                memory = "on" if i % 2 == 0 else "off"
                try:
                    response = _post(client, own_pg.key, thread, memory)
                    outcomes.append((thread, response.status_code, response.json()))
                    if i % 4 == 0:
                        found = client.get(
                            "/v1/memory/search", params={"q": "ferry"},
                            headers={"Authorization": f"Bearer {own_pg.key}"},
                        )  # fmt: skip
                        searches.append((found.status_code, found.json()))
                except httpx.HTTPError as exc:  # a dropped connection is a failure too
                    outcomes.append((thread, -1, repr(exc)))
                i += 1
                time.sleep(0.02)

    try:
        with httpx.Client(base_url=gw.url) as client:
            assert _post(client, own_pg.key, f"{prefix}warm").status_code == 200  # key cached
        worker = threading.Thread(target=traffic)
        worker.start()
        time.sleep(0.5)
        own_pg.pg.stop()
        time.sleep(1.5)  # traffic while the database is down
        restarted = local_services.start_postgres(own_pg.data_dir)
        assert restarted.url == own_pg.pg.url
        time.sleep(2.0)  # and after it is back
        stop.set()
        worker.join(timeout=60)
    finally:
        stop.set()
        gw.stop()
    statuses = [status for _, status, _ in outcomes]
    assert statuses and set(statuses) <= {200, 503}, [
        o for o in outcomes if o[1] not in (200, 503)
    ][:3]
    assert 503 in statuses  # the outage was really seen ...
    assert statuses[-1] == 200  # ... and the gateway recovered by itself
    for _, status, body in outcomes:
        if status == 503:
            assert set(body["error"]) == {"message", "type", "param", "code"}
    assert {status for status, _ in searches} == {200, 503}, searches[:3]
    assert searches[-1][0] == 200
    for status, body in searches:
        if status == 503:
            assert body["error"]["code"] == "database_unavailable"
    # memory-off requests ride through the outage: the key is cached, nothing needs the database
    off_during = [s for t, s, _ in outcomes if int(t.rsplit("-", 1)[1]) % 2 == 1]
    assert all(s == 200 for s in off_during)
    stored = _count_messages(own_pg.pg.url, prefix)
    for thread, status, _ in outcomes:
        index = int(thread.rsplit("-", 1)[1])
        if index % 2 == 0 and status == 200:
            assert stored.get(thread) == 2, thread  # the question and the answer, once each
        if index % 2 == 1:
            assert thread not in stored  # memory off: nothing stored


def test_gateway_killed_right_after_answering_keeps_the_turn(
    own_pg: Stack, mock: MockUpstream, providers: Path, tmp_path: Path
) -> None:
    gw = Gateway(gateway_env(own_pg.services, mock, providers), tmp_path / "gw.log")
    thread = f"kill-{uuid.uuid4().hex[:6]}"
    try:
        with httpx.Client(base_url=gw.url) as client:
            response = _post(client, own_pg.key, thread)
        os.killpg(gw.proc.pid, signal.SIGKILL)  # no graceful shutdown, no flush
        gw.proc.wait()
    finally:
        gw.stop()
    assert response.status_code == 200
    assert _count_messages(own_pg.pg.url, thread) == {thread: 2}


@pytest.fixture
def own_db(services: Services) -> Iterator[str]:
    with own_database(services) as url:
        yield url


def test_redis_down_turns_still_stored_and_embedded_when_it_returns(
    services: Services, mock: MockUpstream, providers: Path, tmp_path: Path, own_db: str
) -> None:
    database = own_db  # its outbox rows can only reach this test's Redis
    redis = local_services.start_redis(tmp_path / "redis")
    port = redis.port
    own = Services(database, redis.url, services.data_dir)
    env = gateway_env(own, mock, providers, CMG_OUTBOX_INTERVAL_SECONDS="0.5")
    gw = Gateway(env, tmp_path / "gw.log")
    prefix = f"rd-{uuid.uuid4().hex[:6]}-"
    tenant = make_tenant(own)
    worker = None
    try:
        redis.stop()
        with httpx.Client(base_url=gw.url) as client:
            for i in range(5):
                response = _post(client, tenant.key, f"{prefix}{i}")
                assert response.status_code == 200, response.text
        assert _count_messages(database, prefix) == {f"{prefix}{i}": 2 for i in range(5)}
        redis = local_services.start_redis(tmp_path / "redis", port=port)
        worker = subprocess.Popen(
            [sys.executable, "-m", "gateway", "worker"], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60

        async def unembedded(session: Any) -> int:
            return int(
                await session.scalar(
                    text(
                        "SELECT count(*) FROM memory_items "
                        "WHERE thread_id LIKE :p AND embedding IS NULL"
                    ),
                    {"p": prefix + "%"},
                )
            )

        while _db(database, unembedded):
            assert time.monotonic() < deadline, (
                "turns stored while Redis was down were never embedded"
            )
            time.sleep(0.3)
    finally:
        if worker is not None:
            stop_group(worker)
        gw.stop()
        redis.stop()
