"""The outbox relay across a Redis outage: nothing is lost, nothing raises into the gateway."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from gateway.ops import local_services
from memory.db import async_engine, sessionmaker
from memory.outbox import OutboxRelay, backlog
from memory.schema import OutboxRow
from tests.conftest import Services
from tests.jobs import (
    add_items,
    burst,
    embedded_count,
    expected_term_stats,
    new_workspace,
    term_stats,
    worker_env,
)


def _pending(db: Engine) -> int:
    with Session(db) as session:
        return int(session.scalar(select(func.count()).where(OutboxRow.pushed_at.is_(None))) or 0)


async def _until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_rows_written_while_redis_is_down_stay_pending_then_all_get_embedded(
    stack: Services, db: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = local_services.start_redis(tmp_path / "redis")
    port = own.port
    workspace = new_workspace(db)
    ids = add_items(db, workspace, ["Carol's flight lands at 7:45 on Tuesday."])

    async def scenario() -> tuple[int, float]:
        nonlocal own
        engine = async_engine(stack.database_url, pool_size=2)
        sessions = sessionmaker(engine)
        relay = OutboxRelay(sessions, own.url)
        try:
            assert await relay.drain() >= 1  # Redis up: pushed at once
            own.stop()
            for n in range(3):
                ids.extend(add_items(db, workspace, [f"Written during the outage, note {n}."]))
                relay.kick()  # after each commit, as the gateway does; must not raise
            assert await relay.drain() == 0
            await asyncio.sleep(0.3)  # let the kicked passes fail too
            assert _pending(db) == 3
            async with sessions() as session:
                count, age = await backlog(session)
            own = local_services.start_redis(tmp_path / "redis", port=port)
            relay.kick()
            await _until(lambda: _pending(db) == 0)
            return count, age
        finally:
            await relay.close()
            await engine.dispose()

    with caplog.at_level(logging.WARNING, logger="cmg.outbox"):
        try:
            count, age = asyncio.run(scenario())
        finally:
            own.stop()
    assert count == 3 and age > 0
    assert "rows stay pending" in caplog.text

    own = local_services.start_redis(tmp_path / "redis", port=port)  # appendonly: the jobs survived
    try:
        burst(worker_env(stack, REDIS_URL=own.url), queues="embed")
    finally:
        own.stop()
    assert embedded_count(db, ids) == len(ids) == 4
    assert term_stats(db, workspace) == expected_term_stats(db, workspace)
