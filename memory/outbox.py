"""The transactional outbox: the only part of the workers the gateway calls.

A job is an ``outbox`` row written in the same transaction as the data it concerns
(``record``); the relay pushes pending rows to RQ right after commit and periodically, so a
Redis outage delays jobs but loses none.

A push is one transaction: lock a batch of pending rows (``FOR UPDATE SKIP LOCKED``, so relays
in several gateway replicas and the scheduler's ``push_outbox`` never push the same row), enqueue
them in one Redis pipeline, mark them pushed, commit. If Redis fails the transaction rolls back
and the rows stay pending. If the commit fails after Redis accepted the jobs, the next push finds
the job id ``outbox-<row id>`` still queued and skips it, so a re-push does not run a job twice.
Consecutive ``embed_items`` rows of a batch merge into one job (``outbox-<first>-<last>``); a
re-push that groups them differently can queue some items twice, which the idempotent job
shrugs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.job import Job, JobStatus
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from core import metrics
from memory.schema import OutboxRow

EMBED = "embed"
SUMMARIZE = "summarize"
MAINTENANCE = "maintenance"
QUEUES = (EMBED, SUMMARIZE, MAINTENANCE)

BATCH = 500
MERGE_ITEMS = 64
JOB_MODULE = "workers.jobs"
RETRY = Retry(max=5, interval=[1, 5, 15, 60, 300])
FAILURE_TTL = 7 * 24 * 3600  # a failed job stays inspectable (`cmg jobs`) for a week
# A job id in one of these states is still going to run: pushing it again would run it twice.
_PENDING_STATES = frozenset(
    s.value for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
)

log = logging.getLogger("cmg.outbox")


def record(session: AsyncSession | Session, queue: str, job: str, **args: Any) -> None:
    """Add a job to the current transaction; it runs only if the transaction commits."""
    session.add(OutboxRow(queue=queue, job=job, args=args))


@dataclass(frozen=True)
class Enqueue:
    """One job to put on an RQ queue: ``workers.jobs.<job>(**kwargs)`` under a fixed id."""

    job_id: str
    queue: str
    job: str
    kwargs: dict[str, Any]


def redis_client(url: str) -> Redis:
    """A client that fails fast: the relay retries on its own schedule, not inside a call."""
    return Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=RedisRetry(ExponentialBackoff(cap=0.2, base=0.02), 1),
    )


def enqueue(redis: Redis, jobs: Sequence[Enqueue]) -> int:
    """Put jobs on their queues in one pipeline, skipping ids already waiting or running.

    Returns how many were enqueued. Raises ``redis.RedisError`` when Redis is unreachable.
    """
    if not jobs:
        return 0
    with redis.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.hget(Job.key_for(job.job_id), "status")
        states = pipe.execute()
    by_queue: dict[str, list[Any]] = {}
    for job, state in zip(jobs, states, strict=True):
        if state is not None and state.decode() in _PENDING_STATES:
            continue
        by_queue.setdefault(job.queue, []).append(
            Queue.prepare_data(
                f"{JOB_MODULE}.{job.job}",
                kwargs=job.kwargs,
                job_id=job.job_id,
                retry=RETRY,
                failure_ttl=FAILURE_TTL,
                description=f"{job.job} ({job.job_id})",
            )
        )
    with redis.pipeline() as pipe:
        for name, datas in by_queue.items():
            Queue(name, connection=redis).enqueue_many(datas, pipeline=pipe)
        pipe.execute()
    return sum(len(datas) for datas in by_queue.values())


def _pending() -> Any:
    return (
        select(OutboxRow.id, OutboxRow.queue, OutboxRow.job, OutboxRow.args)
        .where(OutboxRow.pushed_at.is_(None))
        .order_by(OutboxRow.id)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )


def _mark_pushed(ids: list[int]) -> Any:
    return update(OutboxRow).where(OutboxRow.id.in_(ids)).values(pushed_at=func.now())


def _jobs(rows: Iterable[Any]) -> list[Enqueue]:
    """One job per row, except that consecutive ``embed_items`` rows merge into jobs of up to
    ``MERGE_ITEMS`` ids: a job costs a worker ~20 ms of bookkeeping, a turn is two items."""
    jobs: list[Enqueue] = []
    merged: list[Any] = []
    for row in rows:
        if row.job == "embed_items" and row.queue == EMBED and list(row.args) == ["item_ids"]:
            if merged and _item_count(merged) + len(row.args["item_ids"]) > MERGE_ITEMS:
                jobs.append(_merge(merged))
                merged = []
            merged.append(row)
        else:
            jobs.append(Enqueue(f"outbox-{row.id}", row.queue, row.job, dict(row.args)))
    if merged:
        jobs.append(_merge(merged))
    return jobs


def _item_count(rows: list[Any]) -> int:
    return sum(len(row.args["item_ids"]) for row in rows)


def _merge(rows: list[Any]) -> Enqueue:
    # The id names the rows, so pushing the same rows again finds the job still queued.
    job_id = f"outbox-{rows[0].id}" + (f"-{rows[-1].id}" if len(rows) > 1 else "")
    ids = [i for row in rows for i in row.args["item_ids"]]
    return Enqueue(job_id, EMBED, "embed_items", {"item_ids": list(dict.fromkeys(ids))})


class OutboxRelay:
    """Pushes committed outbox rows to RQ: on ``kick()`` after each commit, and periodically."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], redis_url: str) -> None:
        self._sessions = sessions
        self._redis = redis_client(redis_url)
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def kick(self) -> None:
        """Push soon, without waiting. Kicks during a push coalesce into one more pass."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._drain_until_quiet())

    async def drain(self) -> int:
        """Push one batch of pending rows; returns how many. Never raises: logs and returns 0."""
        try:
            async with self._sessions.begin() as session:
                rows = (await session.execute(_pending())).all()
                if not rows:
                    return 0
                await asyncio.to_thread(enqueue, self._redis, _jobs(rows))
                await session.execute(_mark_pushed([r.id for r in rows]))
            return len(rows)
        except Exception as exc:  # Redis or the database down: rows stay pending for later
            log.warning("outbox push failed, rows stay pending: %s: %s", type(exc).__name__, exc)
            return 0

    async def run_forever(self, interval: float) -> None:
        """The periodic push; cancel the task to stop it."""
        while True:
            await self._drain_all()
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.to_thread(self._redis.close)

    async def _drain_until_quiet(self) -> None:
        while True:
            self._again = False
            await self._drain_all()
            if not self._again:
                return

    async def _drain_all(self) -> None:
        while await self.drain() == BATCH:
            pass


def drain_sync(sessions: sessionmaker[Session], redis: Redis) -> int:
    """``drain`` for synchronous callers (the scheduler's ``push_outbox`` job, the CLI).

    Pushes batches until none is left; unlike ``drain`` it raises when Redis is down.
    """
    total = 0
    while True:
        with sessions.begin() as session:
            rows = session.execute(_pending()).all()
            if rows:
                enqueue(redis, _jobs(rows))
                session.execute(_mark_pushed([r.id for r in rows]))
        total += len(rows)
        if len(rows) < BATCH:
            return total


_BACKLOG = text(
    "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) "
    "FROM outbox WHERE pushed_at IS NULL"
)


async def backlog(session: AsyncSession) -> tuple[int, float]:
    """Pending rows and the age in seconds of the oldest (0 when none), for metrics."""
    count, age = (await session.execute(_BACKLOG)).one()
    return int(count), float(age)


def backlog_sync(session: Session) -> tuple[int, float]:
    count, age = session.execute(_BACKLOG).one()
    return int(count), float(age)


async def sample_forever(
    redis: AsyncRedis, sessions: async_sessionmaker[AsyncSession], interval: float = 10.0
) -> None:
    """Every ``interval`` seconds: RQ queue depths, failed jobs, the outbox backlog and age."""
    while True:
        with contextlib.suppress(Exception):  # a sample missed is a gauge a little stale
            for queue in QUEUES:
                metrics.QUEUE_DEPTH.labels(queue).set(await redis.llen(f"rq:queue:{queue}"))
                metrics.FAILED_JOBS.labels(queue).set(await redis.zcard(f"rq:failed:{queue}"))
            async with sessions() as session:
                count, age = await backlog(session)
            metrics.OUTBOX_BACKLOG.set(count)
            metrics.OUTBOX_AGE.set(age)
        await asyncio.sleep(interval)
