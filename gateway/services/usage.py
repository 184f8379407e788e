"""Accounting (the *finish* stage): tokens and cost per request, batched; budgets enforced.

Requests append to an in-process buffer; a background task flushes it every
``usage_flush_seconds`` in one transaction (raw events + upsert of the daily rollup), so the
hot path never waits on an insert. A failed flush keeps the buffer for the next one. The monthly
budget check reads month-to-date spend from the rollup (cached briefly) plus what this process
has not flushed yet; replicas converge within one flush interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import QuotaExceeded
from memory.schema import UsageDaily, UsageRefusal

log = logging.getLogger("cmg.usage")
_MAX_BUFFER = 200_000
NO_KEY = uuid.UUID(int=0)
_MODEL_CHARS = 256  # what an event row keeps of the client's model string


@dataclass
class Usage:
    request_id: str
    workspace_id: str
    key_id: str | None
    model: str
    provider: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    estimated: bool
    cost_usd: float
    latency_ms: float
    at: datetime
    # The rollup's model: a catalog/configured id or "other" (``model`` is the client's string,
    # kept truncated on the event row only), so usage_daily keys stay few and short.
    model_key: str = "other"
    route: str = "chat"  # or "embeddings"
    memory_tokens: int = 0  # what the injected memory block added to the prompt
    memory_cost_usd: float = 0.0


class UsageRecorder:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], flush_seconds: float) -> None:
        self._sessions = sessions
        self._flush_seconds = flush_seconds
        self._buffer: list[Usage] = []
        self._refusals: dict[tuple[date, str, str, str], int] = defaultdict(int)
        self._unflushed_cost: dict[str, float] = defaultdict(float)
        self._spend_cache: dict[str, tuple[float, float]] = {}

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def add(self, usage: Usage) -> None:
        if len(self._buffer) >= _MAX_BUFFER:
            self._buffer.pop(0)
            log.error("usage buffer full: dropping the oldest event")
        self._buffer.append(usage)
        self._unflushed_cost[usage.workspace_id] += usage.cost_usd

    def refused(self, workspace_id: str, key_id: str | None, kind: str) -> None:
        """Count a request a limit (``rate_limit``) or the budget (``budget``) turned away."""
        day = datetime.now(UTC).date()
        self._refusals[(day, workspace_id, key_id or str(NO_KEY), kind)] += 1

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            await self.flush()

    async def flush(self) -> int:
        batch, self._buffer = self._buffer, []
        refusals, self._refusals = self._refusals, defaultdict(int)
        if not batch and not refusals:
            return 0
        try:
            async with self._sessions.begin() as session:
                if batch:
                    await _write(session, batch)
                if refusals:
                    await _write_refusals(session, refusals)
        except (SQLAlchemyError, psycopg.Error, OSError) as exc:
            log.warning("usage flush failed, %d events kept: %s", len(batch), type(exc).__name__)
            self._buffer = batch + self._buffer
            for key, count in refusals.items():
                self._refusals[key] += count
            return 0
        for usage in batch:
            self._unflushed_cost[usage.workspace_id] -= usage.cost_usd
        self._spend_cache.clear()
        return len(batch)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()

    async def check_budget(self, workspace_id: str, budget: Any) -> None:
        """429 ``insufficient_quota`` once month-to-date spend reaches the workspace budget."""
        if budget is None or isinstance(budget, bool) or not isinstance(budget, int | float):
            return
        spent = await self._month_spend(workspace_id) + self._unflushed_cost.get(workspace_id, 0.0)
        if spent >= float(budget):
            raise QuotaExceeded(
                f"this workspace has used its monthly budget (${float(budget):.2f}); "
                "raise monthly_budget_usd or wait for next month",
                code="insufficient_quota",
            )

    async def _month_spend(self, workspace_id: str) -> float:
        now = time.monotonic()
        hit = self._spend_cache.get(workspace_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        first = datetime.now(UTC).date().replace(day=1)
        async with self._sessions() as session:
            total = await session.scalar(
                select(func.coalesce(func.sum(UsageDaily.cost_usd), 0)).where(
                    UsageDaily.workspace_id == uuid.UUID(workspace_id), UsageDaily.day >= first
                )
            )
        spent = float(total or 0)
        self._spend_cache[workspace_id] = (now + 15.0, spent)
        return spent


_EVENT_COLUMNS = (
    "created_at, request_id, workspace_id, key_id, model, provider, status, prompt_tokens, "
    "completion_tokens, cached_tokens, estimated, cost_usd, latency_ms, route, memory_tokens, "
    "memory_cost_usd"
)
SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens",
           "memory_tokens", "cost_usd", "memory_cost_usd")  # fmt: skip


async def _write(session: AsyncSession, batch: list[Usage]) -> None:
    # COPY, not an INSERT per event: a flush of a few thousand events is one stream of rows,
    # converted by psycopg's C adapters (ids go as text; Postgres parses them).
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    async with driver.cursor() as cursor:
        async with cursor.copy(f"COPY usage_events ({_EVENT_COLUMNS}) FROM STDIN") as copy:
            for u in batch:
                await copy.write_row(
                    (u.at, _clean(u.request_id), u.workspace_id, u.key_id,
                     _clean(u.model[:_MODEL_CHARS]), _clean(u.provider), u.status,
                     u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.estimated,
                     u.cost_usd, u.latency_ms, u.route, u.memory_tokens, u.memory_cost_usd)
                )  # fmt: skip
    rollup: dict[tuple[date, str, str, str, str], list[Any]] = {}
    for u in batch:
        key = (u.at.date(), u.workspace_id, u.key_id or str(NO_KEY), u.model_key, u.route)
        row = rollup.setdefault(key, [0, 0, 0, 0, 0, 0, Decimal(0), Decimal(0)])
        row[0] += 1
        row[1] += 1 if u.status >= 400 else 0
        row[2] += u.prompt_tokens
        row[3] += u.completion_tokens
        row[4] += u.cached_tokens
        row[5] += u.memory_tokens
        row[6] += Decimal(str(u.cost_usd))
        row[7] += Decimal(str(u.memory_cost_usd))
    values = [
        {"day": day, "workspace_id": uuid.UUID(ws), "key_id": uuid.UUID(key), "model": model,
         "route": route, **dict(zip(SUMMED, r, strict=True))}
        for (day, ws, key, model, route), r in sorted(rollup.items())
    ]  # fmt: skip
    stmt = insert(UsageDaily).values(values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["day", "workspace_id", "key_id", "model", "route"],
            set_={
                name: getattr(UsageDaily, name) + getattr(stmt.excluded, name) for name in SUMMED
            },
        )
    )  # fmt: skip


def _clean(value: str | None) -> str | None:
    return value.replace("\x00", "") if value and "\x00" in value else value


async def _write_refusals(
    session: AsyncSession, refusals: dict[tuple[date, str, str, str], int]
) -> None:
    values = [
        {"day": day, "workspace_id": uuid.UUID(ws), "key_id": uuid.UUID(key), "kind": kind,
         "refused": count}
        for (day, ws, key, kind), count in sorted(refusals.items())
    ]  # fmt: skip
    stmt = insert(UsageRefusal).values(values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["day", "workspace_id", "key_id", "kind"],
            set_={"refused": UsageRefusal.refused + stmt.excluded.refused},
        )
    )
