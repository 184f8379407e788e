"""A worker killed in the middle of a job: the job runs again and its effect happens once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from redis import Redis
from rq.job import Job
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from memory.schema import OutboxRow
from tests.conftest import Services
from tests.jobs import (
    add_items,
    cmg_process,
    embedded_count,
    expected_term_stats,
    new_workspace,
    push,
    term_stats,
    worker_env,
)

ITEMS = 128


def wait_for(predicate: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_job_killed_with_its_worker_is_retried_and_counts_each_item_once(
    stack: Services, db: Engine, redis: Redis
) -> None:
    workspace = new_workspace(db)
    texts = [
        f"Entry {n}: Dana paid invoice {1000 + n} in Porto, shared lexemes." for n in range(ITEMS)
    ]
    ids = add_items(db, workspace, texts)
    push(db, redis)
    with Session(db) as session:
        row = session.scalars(select(OutboxRow).order_by(OutboxRow.id.desc()).limit(1)).one()
    job_id = f"outbox-{row.id}"
    env = worker_env(stack)

    with cmg_process(env, "worker", "--queues", "embed") as first:
        wait_for(lambda: embedded_count(db, ids) >= 32)  # some batches committed, more to come
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its scheduler, mid-job
        first.wait()
    done_before_kill = embedded_count(db, ids)
    assert 0 < done_before_kill < ITEMS
    assert Job.fetch(job_id, connection=redis).get_status() == "started"  # orphaned

    with cmg_process(env, "worker", "--queues", "embed"):
        wait_for(lambda: embedded_count(db, ids) == ITEMS)
        wait_for(lambda: Job.fetch(job_id, connection=redis).get_status() == "finished")

    job = Job.fetch(job_id, connection=redis)
    assert job.retries_left == 4  # one retry spent on the crash
    assert job.return_value() == ITEMS - done_before_kill  # the rerun did only what was left
    stats = term_stats(db, workspace)
    assert stats == expected_term_stats(db, workspace)
    assert stats["dana"] == stats["porto"] == ITEMS  # each item counted exactly once
