"""Everything a request needs, built once in the lifespan and handed to handlers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.providers import config as provider_config
from core.providers.client import ProviderClient
from core.providers.router import Router
from core.settings import Settings
from gateway.services import lag
from gateway.services.auth import KeyCache
from gateway.services.catalog import Catalog
from gateway.services.limits import Limiter
from gateway.services.notices import Notices
from gateway.services.stored_responses import ResponseStore
from gateway.services.usage import UsageRecorder
from gateway.services.workspaces import KeyRecord, find_key
from memory.db import ReadPool, async_engine, sessionmaker
from memory.embedder import embedder_for
from memory.outbox import OutboxRelay, sample_forever
from memory.ranker import Ranker
from memory.service import Knobs, Memory
from memory.tokens import count_text


@dataclass
class Deps:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker  # type: ignore[type-arg]
    redis: aioredis.Redis
    keys: KeyCache
    router: Router
    providers: ProviderClient
    catalog: Catalog
    memory: Memory
    limiter: Limiter
    usage: UsageRecorder
    notices: Notices
    responses: ResponseStore
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def build(settings: Settings) -> AsyncIterator[Deps]:
    # First: a missing or corrupt weights file stops the start, not the first request.
    ranker = Ranker.load(Path(settings.recall_ranker) if settings.recall_ranker else None)
    engine = async_engine(settings.database_url)
    sessions = sessionmaker(engine)

    async def lookup(key_hash: str) -> KeyRecord | None:
        async with sessions() as session:
            return await find_key(session, key_hash)

    providers = ProviderClient(settings)
    await providers.start()
    relay = OutboxRelay(sessions, settings.redis_url)
    redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
    embedder = await asyncio.to_thread(embedder_for, settings)
    await asyncio.to_thread(count_text, "warm up", "gpt-4o")  # load the encoding before traffic
    notices = Notices(settings.notice_url or settings.database_url)
    knobs = Knobs(
        max_tokens=settings.memory_max_tokens,
        max_items=settings.memory_max_items,
        min_similarity=settings.memory_min_similarity,
        candidates=settings.memory_candidates,
        summary_threshold=settings.summary_threshold_tokens,
        ranker=ranker,
    )
    reads = ReadPool(settings.database_url)
    deps = Deps(
        settings=settings,
        engine=engine,
        sessions=sessions,
        redis=redis,
        keys=KeyCache(lookup, settings.auth_cache_seconds, live=lambda: notices.up),
        router=Router(provider_config.load(settings)),
        providers=providers,
        catalog=Catalog(sessions),
        memory=Memory(sessions, reads, embedder, knobs, relay),
        limiter=Limiter(settings.redis_url, fail_open=settings.ratelimit_fail_open),
        usage=UsageRecorder(sessions, settings.usage_flush_seconds),
        notices=notices,
        responses=ResponseStore(reads),
    )
    notices.on("api_keys", deps.keys.forget)
    notices.on("workspaces", deps.keys.forget)  # cached callers carry their workspace's settings
    notices.on("models", deps.catalog.changed)
    try:
        with contextlib.suppress(Exception):
            await deps.catalog.load()
        await deps.catalog.sync_if_empty(_catalog_sync(deps))
        deps.tasks.append(asyncio.create_task(notices.run_forever()))
        deps.tasks.append(
            asyncio.create_task(
                deps.catalog.refresh_forever(
                    settings.catalog_refresh_seconds, live=lambda: notices.up
                )
            )
        )
        deps.tasks.append(asyncio.create_task(relay.run_forever(settings.outbox_interval)))
        deps.tasks.append(asyncio.create_task(deps.usage.run_forever()))
        deps.tasks.append(asyncio.create_task(deps.responses.run_forever()))
        deps.tasks.append(asyncio.create_task(sample_forever(deps.redis, deps.sessions)))
        deps.tasks.append(asyncio.create_task(lag.watch_loop()))
        # Everything loaded so far (models, encodings, SQLAlchemy, routes) lives as long as the
        # process: out of the collector's sight, a full collection takes milliseconds instead
        # of ~100 ms stalls every second or two under load.
        gc.collect()
        gc.freeze()
        yield deps
    finally:
        for task in deps.tasks:
            task.cancel()
        await asyncio.gather(*deps.tasks, return_exceptions=True)
        await deps.usage.close()
        await deps.responses.flush()  # the last group
        await deps.limiter.close()
        await relay.close()
        await providers.close()
        await deps.redis.aclose()
        await deps.memory.reads.close()
        await engine.dispose()


def _catalog_sync(deps: Deps) -> Callable[[AsyncSession], Awaitable[int]]:
    """The sync job's own function, run with this process's provider client."""
    from workers import catalog

    async def sync(session: AsyncSession) -> int:
        config = deps.router.config
        if not any(p.catalog for p in config.providers.values()):
            return 0
        return await asyncio.wait_for(catalog.sync(session, deps.providers, config), 30)

    return sync
