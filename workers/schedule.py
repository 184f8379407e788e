"""The processes that run jobs: ``cmg worker`` (RQ) and ``cmg scheduler`` (rq-scheduler).

Worker: an RQ ``SimpleWorker`` (jobs run in the worker process itself) with the embedder, the
token encoding and a database connection loaded before the first job. RQ's default ``Worker``
forks a work-horse per job: crash isolation, but every job then pays a fork of a process holding
the ONNX model, fresh database connections, and an onnxruntime session used after ``fork()``
(see README, "Workers", for the measurements). Our jobs are short, idempotent and retried, so a
crashed worker costs one retry: the supervisor (``cmg up``, systemd, Kubernetes) restarts it,
and on start it reclaims jobs that died with a worker on the same host at once instead of
waiting for RQ's heartbeat expiry. ``with_scheduler`` runs RQ's own scheduler too: it is what
moves retries (``Retry(interval=...)``) back onto their queues.

Scheduler: rq-scheduler for the periodic maintenance jobs, registered under fixed ids so a
restart (or a second scheduler) never adds copies; a periodic job whose previous run is still
queued or running is not queued again.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil
from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.worker import DequeueStrategy
from rq_scheduler import Scheduler

from core.metrics import serve_on_port
from core.settings import Settings
from memory.outbox import JOB_MODULE, MAINTENANCE, QUEUES, Enqueue, enqueue

log = logging.getLogger("cmg.schedule")

SCHEDULER_POLL_SECONDS = 1
WORKER_MAINTENANCE_SECONDS = 60  # how often a worker cleans RQ's registries (RQ default: 600)
_PERIODIC_PREFIX = "periodic-"
_BUSY = frozenset({JobStatus.QUEUED, JobStatus.STARTED})


@dataclass(frozen=True)
class Periodic:
    job: str
    every: int  # seconds
    timeout: int = 180

    @property
    def job_id(self) -> str:
        return _PERIODIC_PREFIX + self.job


PERIODIC = (
    Periodic("push_outbox", 10),
    Periodic("sweep_unembedded", 60),
    Periodic("sync_catalog", 3600, timeout=600),
    Periodic("purge_retention", 3600, timeout=3600),
)


# --- worker ---


def run_worker(settings: Settings, queues: Sequence[str] = QUEUES, *, burst: bool = False) -> None:
    from workers import jobs  # the job modules only where jobs run: the scheduler starts light

    jobs.configure(settings)
    jobs.preload(queues)
    serve_on_port(settings.host, settings.metrics_port)
    redis = Redis.from_url(settings.redis_url)
    reclaimed = reclaim_abandoned(redis, queues)
    if reclaimed:
        log.warning("requeued %d job(s) abandoned by a dead worker on this host", reclaimed)
    worker = SimpleWorker(
        [Queue(name, connection=redis) for name in queues],
        connection=redis,
        maintenance_interval=WORKER_MAINTENANCE_SECONDS,
    )
    worker.work(
        burst=burst,
        with_scheduler=True,
        logging_level=settings.log_level.upper(),
        # A flood of embed jobs must not starve summaries and the periodic maintenance.
        dequeue_strategy=DequeueStrategy.ROUND_ROBIN,
    )


def reclaim_abandoned(redis: Redis, queues: Sequence[str]) -> int:
    """Retry jobs still marked started by a worker that is gone.

    RQ notices an abandoned job only when its heartbeat expires (90 s to minutes) and a worker
    next cleans its registries; a worker process on this host that no longer exists is known
    dead now. The job goes through RQ's own path (``StartedJobRegistry.cleanup``): retried while
    it has retries left, else moved to the failed registry.
    """
    host = socket.gethostname()
    total = 0
    for name in queues:
        _free_scheduler_lock(redis, name, host)
        registry = StartedJobRegistry(name, connection=redis)
        dead = [
            entry
            for entry in (_text(e) for e in redis.zrange(registry.key, 0, -1))
            if _worker_is_dead(redis, entry, host)
        ]
        if dead:
            redis.zadd(registry.key, dict.fromkeys(dead, 0), xx=True)
            registry.cleanup(timestamp=1)
            total += len(dead)
    return total


def _free_scheduler_lock(redis: Redis, queue: str, host: str) -> None:
    """A dead worker's RQ scheduler keeps its queue lock for a minute, and a live worker only
    retries the lock every two: retries would wait that long. Release it if its owner is gone."""
    key = RQScheduler.get_locking_key(queue)
    owner = redis.get(key)
    if owner is None:
        return
    hostname, pid = redis.hmget(SCHEDULER_KEY_TEMPLATE % _text(owner), ["hostname", "pid"])
    if hostname is not None and _text(hostname) == host and pid and not _alive(int(pid)):
        release_lock(redis, key, _text(owner))


def _worker_is_dead(redis: Redis, entry: str, host: str) -> bool:
    execution = Execution.from_composite_key(entry, redis)
    worker_name = redis.hget(execution.key, "worker_name")
    if not worker_name:
        return False  # no record of who runs it: leave it to RQ's heartbeat expiry
    key = Worker.redis_worker_namespace_prefix + _text(worker_name)
    hostname, pid = redis.hmget(key, ["hostname", "pid"])
    if hostname is None:
        return True  # the worker's own key expired: nobody is heartbeating
    if _text(hostname) != host or not pid:
        return False
    return not _alive(int(pid))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


# --- scheduler ---


class _Scheduler(Scheduler):  # type: ignore[misc]  # rq-scheduler ships no types
    def enqueue_job(self, job: Job) -> None:
        """Skip a periodic run while the previous one is still queued or running."""
        interval = job.meta.get("interval")
        if interval and job.get_status(refresh=False) in _BUSY:
            self.connection.zadd(self.scheduled_jobs_key, {job.id: int(time.time()) + interval})
            return
        super().enqueue_job(job)


def scheduler(redis: Redis) -> Scheduler:
    return _Scheduler(queue_name=MAINTENANCE, connection=redis, interval=SCHEDULER_POLL_SECONDS)


def register_periodic(sched: Scheduler) -> list[str]:
    """Make the scheduled set hold exactly one copy of each periodic job; returns their ids.

    An entry that matches its spec keeps its next run time; a changed or missing one is
    (re)scheduled to run now; ids of retired periodic jobs are removed.
    """
    wanted = {p.job_id: p for p in PERIODIC}
    present: dict[str, Job] = {job.id: job for job in sched.get_jobs()}
    for job_id, old in present.items():
        if job_id.startswith(_PERIODIC_PREFIX) and job_id not in wanted:
            sched.cancel(old)
            old.delete()
    now = datetime.now(UTC)
    for p in PERIODIC:
        current = present.get(p.job_id)
        if current is not None and _matches(current, p):
            continue
        if current is not None:
            sched.cancel(current)
        sched.schedule(
            now,
            f"{JOB_MODULE}.{p.job}",
            id=p.job_id,
            interval=p.every,
            queue_name=MAINTENANCE,
            timeout=p.timeout,
            description=f"{p.job} (every {p.every}s)",
        )
    return list(wanted)


def _matches(job: Job, p: Periodic) -> bool:
    return (
        job.func_name == f"{JOB_MODULE}.{p.job}"
        and job.meta.get("interval") == p.every
        and job.origin == MAINTENANCE
        and job.timeout == p.timeout
    )


def run_scheduler(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_url)
    sched = scheduler(redis)
    ids = register_periodic(sched)
    # The catalog on start, then hourly (a no-op when a copy is already waiting).
    enqueue(redis, [Enqueue("startup-sync_catalog", MAINTENANCE, "sync_catalog", {})])
    log.info("periodic jobs: %s", ", ".join(ids))
    sched.run()


# --- status ---


def status(redis: Redis) -> dict[str, Any]:
    """Queue depths, running and scheduled jobs, failures with the latest error, workers."""
    queues = {}
    for name in QUEUES:
        failed = FailedJobRegistry(name, connection=redis)
        latest = failed.get_job_ids(0, 0, desc=True)
        queues[name] = {
            "queued": Queue(name, connection=redis).count,
            "started": StartedJobRegistry(name, connection=redis).count,
            "scheduled": ScheduledJobRegistry(name, connection=redis).count,  # type: ignore[no-untyped-call]
            "failed": failed.count,
            "latest_failure": _failure(redis, latest[0]) if latest else None,
        }
    workers = Worker.all(connection=redis)
    periodic = []
    for job, at in scheduler(redis).get_jobs(with_times=True):
        next_run = at.replace(tzinfo=UTC)
        periodic.append(
            {"id": job.id, "every": job.meta.get("interval"), "next": next_run.isoformat()}
        )
    return {
        "queues": queues,
        "workers": [
            {"name": w.name, "state": str(w.state), "queues": w.queue_names()} for w in workers
        ],
        "periodic": periodic,
    }


def _failure(redis: Redis, job_id: str) -> dict[str, Any]:
    try:
        job = Job.fetch(job_id, connection=redis)
    except Exception:
        return {"id": job_id, "error": None}
    result = job.latest_result()
    exc = (result.exc_string if result is not None else None) or ""
    lines = [line for line in exc.strip().splitlines() if line.strip()]
    return {"id": job_id, "func": job.func_name, "error": lines[-1] if lines else None}
