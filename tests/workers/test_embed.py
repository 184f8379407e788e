"""Embedding: outbox → relay → Redis → a burst worker → vectors and term statistics."""

from __future__ import annotations

import asyncio
import threading
import uuid

import numpy as np
from redis import Redis
from rq.job import Job
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from memory.db import async_engine, sessionmaker
from memory.embedder import LOCAL_MODEL, LocalMiniLM, document_text
from memory.outbox import EMBED, Enqueue, OutboxRelay, backlog_sync, enqueue
from memory.schema import MemoryItem, OutboxRow
from tests.conftest import Services
from tests.jobs import (
    add_items,
    burst,
    embedded_count,
    expected_term_stats,
    new_workspace,
    push,
    term_stats,
    worker_env,
)
from workers import vectors

TEXTS = [
    "Alice moved to Lisbon in March 2021.",
    "Lisbon is sunny; Alice likes the trams.",
    "Bob prefers green tea over coffee.",
    "The deploy is scheduled for Friday at 10:00.",
]


def _relay_drain(services: Services) -> int:
    async def run() -> int:
        engine = async_engine(services.database_url, pool_size=1)
        relay = OutboxRelay(sessionmaker(engine), services.redis_url)
        try:
            return await relay.drain()
        finally:
            await relay.close()
            await engine.dispose()

    return asyncio.run(run())


def _vectors(db: Engine, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[np.ndarray, str | None]]:
    with Session(db) as session:
        rows = session.execute(
            select(MemoryItem.id, MemoryItem.embedding, MemoryItem.embedding_model).where(
                MemoryItem.id.in_(ids)
            )
        ).all()
    return {r.id: (np.asarray(r.embedding, dtype=np.float32), r.embedding_model) for r in rows}


def test_outbox_rows_are_pushed_and_embedded_once_by_a_burst_worker(
    stack: Services, db: Engine, redis: Redis, minilm: LocalMiniLM
) -> None:
    push(db, redis)  # whatever earlier tests left pending
    workspace = new_workspace(db)
    ids = add_items(db, workspace, TEXTS, thread_id="t1")
    gone = add_items(db, workspace, ["deleted before its job ran"])
    with Session(db) as session, session.begin():
        session.execute(text("DELETE FROM memory_items WHERE id = :id"), {"id": gone[0]})
        assert backlog_sync(session)[0] == 2  # nothing else is pending in this database

    assert _relay_drain(stack) == 2
    with Session(db) as session:
        rows = session.scalars(select(OutboxRow).order_by(OutboxRow.id.desc()).limit(2)).all()
    assert all(row.pushed_at is not None for row in rows)
    job_id = f"outbox-{rows[1].id}-{rows[0].id}"  # consecutive embed rows: one job
    job = Job.fetch(job_id, connection=redis)
    assert job.func_name == "workers.jobs.embed_items" and job.retries_left == 5
    assert job.kwargs == {"item_ids": [str(i) for i in [*ids, *gone]]}
    # The same items again (a re-push, a sweep): that run must change nothing.
    enqueue(redis, [Enqueue("again", EMBED, "embed_items", {"item_ids": [str(i) for i in ids]})])

    burst(worker_env(stack), queues="embed")

    assert Job.fetch(job_id, connection=redis).return_value() == len(ids)  # not the deleted one
    assert Job.fetch("again", connection=redis).return_value() == 0
    vectors = _vectors(db, ids)
    with Session(db) as session:
        items = session.scalars(select(MemoryItem).where(MemoryItem.id.in_(ids))).all()
    expected = minilm.embed([document_text(i.role, i.kind, i.content, i.created_at) for i in items])
    for item, want in zip(items, expected, strict=True):
        got, model = vectors[item.id]
        assert model == LOCAL_MODEL
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-3
        assert float(got @ want) > 0.999  # speaker and date were embedded with the text
    stats = term_stats(db, workspace)
    assert stats == expected_term_stats(db, workspace)
    assert stats["lisbon"] == 2 and stats["alic"] == 2 and stats["tea"] == 1


def test_concurrent_runs_on_the_same_items_count_each_item_once(
    db: Engine, minilm: LocalMiniLM
) -> None:
    workspace = new_workspace(db)
    ids = add_items(db, workspace, [f"{t} Copy {n}." for n in range(10) for t in TEXTS])
    results: list[int] = []

    def run() -> None:
        results.append(vectors.embed(db, minilm, ids))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(results) == len(ids)  # every item written by exactly one of the runs
    assert embedded_count(db, ids) == len(ids)
    stats = term_stats(db, workspace)
    assert stats == expected_term_stats(db, workspace)
    assert stats["lisbon"] == 20
