"""The model catalog as the gateway sees it: an in-process copy of the ``models`` table.

Loaded at start (synced first, once, when the table is empty) and reloaded when a change notice
says the ``models`` table changed (``gateway/services/notices.py``); only while the notice
channel is down does it reload every ``catalog_refresh_seconds`` instead. The scheduler's sync
job (``workers/catalog.py``) keeps the table fresh. A request never waits on the database here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import NotFound
from core.providers.router import Target
from memory.schema import CatalogModel

log = logging.getLogger("cmg.catalog")
_SYNC_LOCK = 0x636D675F636174  # pg advisory lock id: "cmg_cat"
Sync = Callable[[AsyncSession], Awaitable[int]]


class Price(NamedTuple):
    """USD per token: prompt, completion, and cached prompt input when the provider lists it."""

    prompt: Decimal
    completion: Decimal
    cached: Decimal | None = None

    def cost(self, prompt: int, completion: int, cached: int = 0) -> Decimal:
        """Cached tokens at the cached price (the prompt price when unknown); never negative."""
        prompt, completion = max(prompt, 0), max(completion, 0)
        cached = min(max(cached, 0), prompt)
        read = self.prompt if self.cached is None else self.cached
        return (prompt - cached) * self.prompt + cached * read + completion * self.completion


class Catalog:
    def __init__(self, sessions: async_sessionmaker) -> None:  # type: ignore[type-arg]
        self._sessions = sessions
        self._models: dict[str, dict[str, Any]] = {}
        self._context: dict[str, int] = {}
        self._prices: dict[str, Price] = {}
        self._by_provider: dict[str, frozenset[str]] = {}
        self._changed = asyncio.Event()

    async def load(self) -> None:
        async with self._sessions() as session:
            rows = list(await session.scalars(select(CatalogModel).order_by(CatalogModel.id)))
        models: dict[str, dict[str, Any]] = {}
        by_provider: dict[str, set[str]] = {}
        context: dict[str, int] = {}
        prices: dict[str, Price] = {}
        for row in rows:
            if row.prompt_price is not None or row.completion_price is not None:
                prices[row.id] = Price(
                    row.prompt_price or Decimal(0),
                    row.completion_price or Decimal(0),
                    row.cached_price,
                )
            models[row.id] = _model_object(row)
            by_provider.setdefault(row.provider, set()).add(row.upstream_id)
            if row.context_length:
                context[row.id] = row.context_length
        self._models, self._context, self._prices = models, context, prices
        self._by_provider = {k: frozenset(v) for k, v in by_provider.items()}

    def changed(self) -> None:
        """A change notice: reload soon (in ``refresh_forever``, not in the listener)."""
        self._changed.set()

    async def refresh_forever(self, interval: float, live: Callable[[], bool]) -> None:
        """Reload on each notice; every ``interval`` seconds as well while notices are down."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)
            if not self._changed.is_set() and live():
                continue
            self._changed.clear()
            try:
                await self.load()
            except (SQLAlchemyError, OSError):
                self._changed.set()  # try again shortly
                await asyncio.sleep(1.0)

    async def sync_if_empty(self, sync: Sync) -> None:
        """An empty catalog is synced once at start, one replica at a time: the others wait on
        the lock, then find the rows and only load them. A failure is logged, never raised."""
        if self._models:
            return
        try:
            async with self._sessions.begin() as session:
                await session.execute(text("SET LOCAL lock_timeout = '30s'"))
                await session.execute(select(func.pg_advisory_xact_lock(_SYNC_LOCK)))
                if not await session.scalar(select(func.count()).select_from(CatalogModel)):
                    count = await sync(session)
                    log.info("catalog was empty: synced %d models at start", count)
            await self.load()
        except Exception as exc:  # an unreachable provider or database must not stop startup
            log.warning("catalog not synced at start: %s: %s", type(exc).__name__, exc)

    def list(self) -> list[dict[str, Any]]:
        return list(self._models.values())

    def get(self, model_id: str) -> dict[str, Any]:
        model = self._models.get(model_id)
        if model is None:
            raise NotFound(
                f"the model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        return model

    def knows(self, model_id: str) -> bool:
        return model_id in self._models

    def context_length(self, model_id: str) -> int | None:
        return self._context.get(model_id)

    def price(self, model_id: str) -> Price | None:
        """USD per prompt, completion and cached prompt token, when the catalog knows them."""
        return self._prices.get(model_id)

    def check(self, target: Target) -> None:
        """404 when the catalog has this provider's models and this one is not among them."""
        known = self._by_provider.get(target.provider.name)
        if known and target.model not in known:
            raise NotFound(
                f"the model {target.served!r} does not exist", param="model", code="model_not_found"
            )


def _model_object(row: CatalogModel) -> dict[str, Any]:
    data = dict(row.data or {})
    data.update(
        id=row.id,
        object="model",
        created=int(data.get("created") or row.updated_at.timestamp()),
        owned_by=str(data.get("owned_by") or row.provider),
    )
    return data
