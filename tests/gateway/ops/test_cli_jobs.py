"""``cmg scheduler``, ``cmg jobs`` and ``cmg memory reembed`` as an operator runs them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from gateway.ops import local_services
from gateway.ops.cli import main
from memory.embedder import LOCAL_MODEL, LocalMiniLM
from memory.outbox import backlog_sync
from memory.schema import MemoryItem, OutboxRow, Workspace
from tests.conftest import Services
from tests.jobs import (
    add_items,
    cmg,
    cmg_process,
    expected_term_stats,
    new_workspace,
    push,
    term_stats,
    worker_env,
)
from workers import schedule, vectors

SCHEDULED = "rq:scheduler:scheduled_jobs"
PERIODIC_IDS = sorted(p.job_id for p in schedule.PERIODIC)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Redis]:
    server = local_services.start_redis(tmp_path / "redis")
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def _url(redis: Redis) -> str:
    kwargs = redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def _run_scheduler(env: dict[str, str], redis: Redis, ready: Callable[[], bool]) -> None:
    """Start ``cmg scheduler``, wait until ``ready()`` and one more poll, then stop it."""
    with cmg_process(env, "scheduler") as proc:
        deadline = time.monotonic() + 30
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(schedule.SCHEDULER_POLL_SECONDS + 0.5)


def test_restarting_the_scheduler_keeps_one_copy_of_each_periodic_job(
    stack: Services, own_redis: Redis
) -> None:
    env = worker_env(stack, REDIS_URL=_url(own_redis))
    _run_scheduler(env, own_redis, lambda: own_redis.llen("rq:queue:maintenance") >= 5)
    first = dict(own_redis.zrange(SCHEDULED, 0, -1, withscores=True))
    _run_scheduler(env, own_redis, lambda: bool(own_redis.keys("rq:scheduler_instance:*")))

    assert sorted(i.decode() for i in own_redis.zrange(SCHEDULED, 0, -1)) == PERIODIC_IDS
    queued = sorted(i.decode() for i in own_redis.lrange("rq:queue:maintenance", 0, -1))
    # Each periodic job ran once on the first start and not again while still queued (no worker
    # here); the start-up catalog sync was not queued twice.
    assert queued == sorted([*PERIODIC_IDS, "startup-sync_catalog"])
    again = dict(own_redis.zrange(SCHEDULED, 0, -1, withscores=True))
    hourly = [b"periodic-sync_catalog", b"periodic-purge_retention"]
    assert [again[k] for k in hourly] == [first[k] for k in hourly]  # a restart keeps the times
    job = Job.fetch("periodic-push_outbox", connection=own_redis)
    assert job.func_name == "workers.jobs.push_outbox" and job.meta["interval"] == 10


def test_registration_twice_leaves_one_copy_and_a_changed_spec_is_replaced(
    own_redis: Redis,
) -> None:
    sched = schedule.scheduler(own_redis)
    schedule.register_periodic(sched)
    own_redis.zadd(SCHEDULED, {"periodic-retired_job": 1})  # a job an older version scheduled
    Job.create("os.getpid", id="periodic-retired_job", connection=own_redis).save()
    stale = Job.fetch("periodic-sweep_unembedded", connection=own_redis)
    stale.meta["interval"] = 999
    stale.save_meta()
    schedule.register_periodic(sched)
    schedule.register_periodic(sched)
    assert sorted(j.id for j in sched.get_jobs()) == PERIODIC_IDS
    assert own_redis.zcard(SCHEDULED) == len(PERIODIC_IDS)
    assert Job.fetch("periodic-sweep_unembedded", connection=own_redis).meta["interval"] == 60

    for _ in range(2):  # due twice while no worker takes them: queued once each
        own_redis.zadd(SCHEDULED, dict.fromkeys(PERIODIC_IDS, 1))
        sched.enqueue_jobs()
    queued = sorted(i.decode() for i in own_redis.lrange("rq:queue:maintenance", 0, -1))
    assert queued == PERIODIC_IDS
    assert min(score for _, score in own_redis.zrange(SCHEDULED, 0, -1, withscores=True)) > 1


def test_jobs_reports_queues_failures_and_the_outbox_backlog(
    stack: Services,
    db: Engine,
    own_redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    embed = Queue("embed", connection=own_redis)
    embed.enqueue("workers.jobs.embed_items", item_ids=["not-a-uuid"])
    Queue("summarize", connection=own_redis).enqueue("workers.jobs.refresh_summary", "x", "y")
    SimpleWorker([embed], connection=own_redis).work(burst=True)
    with Session(db) as session:
        pending, _ = backlog_sync(session)

    env = worker_env(stack, REDIS_URL=_url(own_redis))
    report = json.loads(cmg(env, "jobs", "--json").stdout)

    assert report["queues"]["embed"]["failed"] == 1
    assert report["queues"]["embed"]["latest_failure"]["error"].startswith("ValueError")
    assert report["queues"]["summarize"]["queued"] == 1
    assert report["queues"]["maintenance"] == {
        "queued": 0, "started": 0, "scheduled": 0, "failed": 0, "latest_failure": None
    }  # fmt: skip
    assert report["outbox"]["pending"] == pending

    for name, value in env.items():  # the same report as text, from this process
        monkeypatch.setenv(name, value)
    main(["jobs"])
    plain = capsys.readouterr().out
    assert "latest failure" in plain and "ValueError" in plain and "outbox:" in plain


def test_reembed_clears_vectors_of_other_models_and_queues_them_again(
    stack: Services, db: Engine, redis: Redis, minilm: LocalMiniLM
) -> None:
    workspace = new_workspace(db)
    ids = add_items(db, workspace, ["Erin likes rowing.", "Erin rows on Sundays.", "Tea."])
    vectors.embed(db, minilm, ids)
    push(db, redis)  # their embed job: out of the way, so the reembed row is pushed alone
    stale = sorted(ids[:2])
    with Session(db) as session, session.begin():
        session.execute(
            text("UPDATE memory_items SET embedding_model = 'old-model' WHERE id = ANY(:ids)"),
            {"ids": stale},
        )
        name = session.scalar(select(Workspace.name).where(Workspace.id == workspace))
    assert name is not None

    out = cmg(worker_env(stack), "memory", "reembed", "--workspace", name).stdout
    assert out.strip() == f"2 memory items queued for re-embedding with {LOCAL_MODEL}"

    with Session(db) as session:
        cleared = session.scalars(
            select(MemoryItem.id).where(MemoryItem.id.in_(ids), MemoryItem.embedding.is_(None))
        ).all()
        row = session.scalars(select(OutboxRow).order_by(OutboxRow.id.desc()).limit(1)).one()
    assert sorted(cleared) == stale
    assert term_stats(db, workspace) == expected_term_stats(db, workspace)
    assert "erin" not in term_stats(db, workspace)  # only the cleared items had it
    assert row.pushed_at is not None and sorted(row.args["item_ids"]) == sorted(map(str, stale))
    assert Job.fetch(f"outbox-{row.id}", connection=redis).func_name == "workers.jobs.embed_items"

    assert vectors.embed(db, minilm, stale) == 2  # what the queued job does
    assert term_stats(db, workspace) == expected_term_stats(db, workspace)
    assert term_stats(db, workspace)["erin"] == 2
