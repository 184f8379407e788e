"""Maintenance jobs: catalog sync and retention, run by a real worker on the maintenance queue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from redis import Redis
from rq.job import Job
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from memory.embedder import LocalMiniLM
from memory.outbox import MAINTENANCE, Enqueue, enqueue
from memory.schema import CatalogModel, Injection, MemoryItem, StoredResponse, Thread
from tests.conftest import Services
from tests.jobs import (
    add_items,
    burst,
    expected_term_stats,
    new_workspace,
    term_stats,
    worker_env,
)
from tests.mock_upstream import MockUpstream
from workers import vectors


@dataclass
class Retention:
    workspace: uuid.UUID
    keep_all: uuid.UUID
    gone: list[uuid.UUID]
    mixed_new: list[uuid.UUID]


@dataclass
class Ran:
    catalog: Job
    purge: Job
    retention: Retention


def _retention_data(db: Engine, minilm: LocalMiniLM) -> Retention:
    old = datetime.now(UTC) - timedelta(days=40)
    workspace = new_workspace(db, {"retention_days": 30})
    keep_all = new_workspace(db)  # no retention setting: nothing of it goes
    gone_thread = add_items(db, workspace, ["Zanzibar trip planned.", "Zanzibar noted."],
                            thread_id="old", created_at=old)  # fmt: skip
    mixed_old = add_items(db, workspace, ["Old fact: Zanzibar visa.", "Ok."],
                          thread_id="mixed", created_at=old)  # fmt: skip
    mixed_new = add_items(db, workspace, ["New fact: budget is 900.", "Noted, 900."],
                          thread_id="mixed")  # fmt: skip
    [summary] = add_items(db, workspace, ["Zanzibar visa; budget 900."], thread_id="mixed",
                          kind="summary")  # fmt: skip
    [note] = add_items(db, workspace, ["An old Zanzibar note."], created_at=old)
    untouched = add_items(db, keep_all, ["Zanzibar, long ago."], created_at=old)
    with Session(db) as session, session.begin():
        session.execute(
            text("UPDATE memory_items SET source_ids = CAST(:s AS uuid[]) WHERE id = :id"),
            {"s": [*mixed_old, *mixed_new], "id": summary},
        )
        session.execute(
            text("UPDATE threads SET summarized_position = 4 WHERE workspace_id = :w AND id = :t"),
            {"w": workspace, "t": "mixed"},
        )
        session.add(Injection(request_id=uuid.uuid4().hex, workspace_id=workspace,
                              item_ids=[note], tokens=5, created_at=old))  # fmt: skip
        for resp_id, at in (("resp_old", old), ("resp_new", datetime.now(UTC))):
            session.add(StoredResponse(id=resp_id, workspace_id=workspace, response={},
                                       input_items=[], conversation=[], created_at=at))  # fmt: skip
    everything = [*gone_thread, *mixed_old, *mixed_new, summary, note, *untouched]
    assert vectors.embed(db, minilm, everything) == len(everything)
    assert term_stats(db, workspace)["zanzibar"] == 5
    return Retention(workspace, keep_all, [*gone_thread, *mixed_old, summary, note], mixed_new)


@pytest.fixture(scope="module")
def ran(stack: Services, db: Engine, redis: Redis, mock: MockUpstream, minilm: LocalMiniLM) -> Ran:
    """Both jobs queued, then one worker on the maintenance (and summarize) queues."""
    retention = _retention_data(db, minilm)
    ids = {job: f"test-{job}-{uuid.uuid4().hex[:8]}" for job in ("sync_catalog", "purge_retention")}
    enqueue(redis, [Enqueue(job_id, MAINTENANCE, job, {}) for job, job_id in ids.items()])
    burst(worker_env(stack, OPENROUTER_BASE_URL=mock.base_url), queues="maintenance,summarize")
    fetch = {job: Job.fetch(job_id, connection=redis) for job, job_id in ids.items()}
    return Ran(fetch["sync_catalog"], fetch["purge_retention"], retention)


def test_catalog_sync_stores_the_providers_models_with_prices(
    ran: Ran, db: Engine, mock: MockUpstream
) -> None:
    assert ran.catalog.get_status() == "finished"
    assert ran.catalog.return_value() == len(mock.models)
    with Session(db) as session:
        gpt = session.get(CatalogModel, "mock/gpt")
    assert gpt is not None and gpt.provider == "openrouter" and gpt.context_length == 8192
    assert gpt.prompt_price == Decimal("0.000001") and gpt.completion_price == Decimal("0.000002")


def test_retention_deletes_old_memory_its_term_counts_and_what_was_derived_from_it(
    ran: Ran, db: Engine
) -> None:
    r = ran.retention
    assert ran.purge.return_value() == 6  # 2 + 2 old messages, the derived summary, the note
    with Session(db) as session:
        left = set(
            session.scalars(select(MemoryItem.id).where(MemoryItem.workspace_id == r.workspace))
        )
        assert left >= set(r.mixed_new) and not left & set(r.gone)
        assert session.get(Thread, (r.workspace, "old")) is None  # emptied thread deleted
        injections = select(Injection).where(Injection.workspace_id == r.workspace)
        assert session.scalars(injections).all() == []
        stored = select(StoredResponse.id).where(StoredResponse.workspace_id == r.workspace)
        assert session.scalars(stored).all() == ["resp_new"]  # stored responses age out too
        [resummary] = session.scalars(
            select(MemoryItem).where(
                MemoryItem.workspace_id == r.workspace, MemoryItem.kind == "summary"
            )
        ).all()
        thread = session.get(Thread, (r.workspace, "mixed"))
    # The thread is summarized again from what is left.
    assert resummary.source_ids == r.mixed_new and "900" in resummary.content
    assert thread is not None and thread.summarized_position == 4
    stats = term_stats(db, r.workspace)
    assert stats == expected_term_stats(db, r.workspace) and "zanzibar" not in stats
    assert term_stats(db, r.keep_all)["zanzibar"] == 1
