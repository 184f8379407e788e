"""RQ jobs: plain importable functions on ids and primitives, each safe to run twice.

The outbox enqueues ``workers.jobs.<name>(**args)``; the scheduler enqueues the maintenance
ones. Everything a job needs (settings, a sync database engine, the embedder, a Redis client)
is built lazily, once per process, in ``_Context``: ``cmg worker`` calls ``configure`` with its
resolved settings and ``preload`` before taking jobs, so no job pays the model load; anything
else (``rq worker``, a test) gets ``Settings.from_env()``. A forked child keeps the loaded
model and opens its own connections.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from core.metrics import timed_job
from core.settings import Settings
from memory.db import sync_engine
from memory.embedder import Embedder, embedder_for
from memory.outbox import (
    EMBED,
    QUEUES,
    SUMMARIZE,
    Enqueue,
    drain_sync,
    enqueue,
    redis_client,
)
from memory.tokens import count_text
from workers import retention, summary, vectors

log = logging.getLogger("cmg.jobs")

SWEEP_LIMIT = 10_000


@dataclass
class _Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    pid: int = field(default_factory=os.getpid)
    _embedder: Embedder | None = None
    _redis: Redis | None = None

    @classmethod
    def build(cls, settings: Settings) -> _Context:
        engine = sync_engine(settings.database_url)
        return cls(settings, engine, sessionmaker(engine, expire_on_commit=False))

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = embedder_for(self.settings)
        return self._embedder

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = redis_client(self.settings.redis_url)
        return self._redis


_settings: Settings | None = None
_context: _Context | None = None


def configure(settings: Settings) -> None:
    """Run jobs with these settings (the worker's, with embedded services resolved)."""
    global _settings
    close()
    _settings = settings


def close() -> None:
    """Release this process's connections (the next job builds them again)."""
    global _context
    if _context is not None and _context.pid == os.getpid():
        _context.engine.dispose()
        if _context._redis is not None:
            _context._redis.close()
    _context = None


def preload(queues: Sequence[str] = QUEUES) -> None:
    """Load what jobs of these queues need (embedder, token encoding, a database connection)."""
    ctx = _ctx()
    if EMBED in queues:
        ctx.embedder.embed(["warm up"])
    if SUMMARIZE in queues:
        count_text("warm up", "gpt-4o")
    with ctx.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _ctx() -> _Context:
    global _context
    if _context is not None and _context.pid != os.getpid():
        # A forked child: the parent's connections stay the parent's; the loaded model is
        # plain memory and is kept.
        _context.engine.dispose(close=False)
        _context = _Context(
            _context.settings, _context.engine, _context.sessions, _embedder=_context._embedder
        )
    if _context is None:
        _context = _Context.build(_settings or Settings.from_env())
    return _context


# --- the jobs ---


@timed_job
def embed_items(item_ids: list[str]) -> int:
    """Embed these items where still unembedded; returns how many this run wrote."""
    ids = [uuid.UUID(i) for i in item_ids]
    ctx = _ctx()
    return vectors.embed(ctx.engine, ctx.embedder, ids)


@timed_job
def reindex_memory(workspace_id: str | None = None) -> int:
    """``cmg memory reindex --queue``: the current context and keys for embedded items."""
    ws = uuid.UUID(workspace_id) if workspace_id else None
    return vectors.reindex(_ctx().engine, workspace_id=ws)


@timed_job
def refresh_summary(workspace_id: str, thread_id: str) -> str | None:
    """Fold the thread's new messages into its summary; the new summary's id, or None."""
    workspace = uuid.UUID(workspace_id)
    ctx = _ctx()
    with ctx.sessions() as session:
        pending = summary.load(session, workspace, thread_id)
    if pending is None:
        return None
    content, method = summary.write(pending, ctx.settings)
    with ctx.sessions.begin() as session:
        item_id = summary.store(session, pending, content, method)
    if item_id is None:
        return None
    _push_quietly(ctx)  # its embed job, now rather than at the next periodic push
    return str(item_id)


@timed_job
def extract_facts(workspace_id: str, item_ids: list[str]) -> int:
    """Durable facts about the end user from these new messages (workspaces with ``facts``)."""
    from workers import facts

    ctx = _ctx()
    return len(facts.extract(ctx.engine, ctx.embedder, ctx.settings, workspace_id, item_ids))


@timed_job
def sync_catalog() -> int:
    """Refresh the model catalog from every provider's ``/models``."""
    from memory.db import run_transaction
    from workers import catalog

    settings = _ctx().settings
    return run_transaction(settings.database_url, lambda s: catalog.sync_once(s, settings))


@timed_job
def sweep_unembedded(older_than_seconds: int = 60) -> int:
    """Enqueue embed jobs for items left without a vector (a job lost with Redis, say).

    Job ids derive from the item ids, so a sweep never queues a second copy of a job that is
    still waiting. Returns how many items the enqueued jobs cover.
    """
    ctx = _ctx()
    with ctx.engine.connect() as conn:
        ids = [
            str(i)
            for i in conn.execute(
                text(
                    "SELECT id FROM memory_items WHERE embedding IS NULL "
                    "AND created_at < now() - make_interval(secs => :age) "
                    "ORDER BY created_at LIMIT :limit"
                ),
                {"age": older_than_seconds, "limit": SWEEP_LIMIT},
            ).scalars()
        ]
    size = vectors.REEMBED_JOB_SIZE
    jobs = [_sweep_job(ids[start : start + size]) for start in range(0, len(ids), size)]
    enqueue(ctx.redis, jobs)
    return len(ids)


@timed_job
def push_outbox() -> int:
    """Push every pending outbox row to RQ; returns how many."""
    ctx = _ctx()
    return drain_sync(ctx.sessions, ctx.redis)


@timed_job
def purge_retention() -> int:
    """Delete memory older than each workspace's ``retention_days``; returns items deleted."""
    ctx = _ctx()
    deleted = retention.purge(ctx.sessions)
    _push_quietly(ctx)
    return deleted


def _sweep_job(ids: list[str]) -> Enqueue:
    digest = hashlib.sha256(",".join(ids).encode()).hexdigest()[:20]
    return Enqueue(f"sweep-{digest}", EMBED, "embed_items", {"item_ids": ids})


def _push_quietly(ctx: _Context) -> None:
    try:
        drain_sync(ctx.sessions, ctx.redis)
    except Exception as exc:  # the scheduler's push_outbox will get it
        log.warning("outbox push after a job failed: %s", exc)


__all__ = [
    "close",
    "configure",
    "embed_items",
    "preload",
    "purge_retention",
    "push_outbox",
    "refresh_summary",
    "reindex_memory",
    "sweep_unembedded",
    "sync_catalog",
]
