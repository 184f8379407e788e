"""Usage reports: the daily rollup summed over a period, grouped by day, key, model or route.

Both the workspace's ``GET /v1/usage`` and the operator's ``GET /admin/usage`` read it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import BadRequest
from gateway.services.usage import NO_KEY, SUMMED
from memory.schema import UsageDaily, UsageEvent, UsageRefusal


async def report(
    session: AsyncSession,
    *,
    workspace_id: str | None,
    start: date,
    end: date,
    group_by: str | tuple[str, ...],
) -> list[dict[str, Any]]:
    """Usage from the daily rollup, grouped by any of ``day``, ``key``, ``model`` and ``route``."""
    groups = (group_by,) if isinstance(group_by, str) else group_by
    columns = [_GROUPS[name] for name in groups]
    query = (
        select(*columns, *(func.sum(getattr(UsageDaily, name)) for name in SUMMED))
        .where(UsageDaily.day >= start, UsageDaily.day <= end)
        .group_by(*columns)
        .order_by(*columns)
    )
    if workspace_id is not None:
        query = query.where(UsageDaily.workspace_id == uuid.UUID(workspace_id))
    rows = await session.execute(query)
    return [_report_row(groups, tuple(row)) for row in rows]


_GROUPS: dict[str, Any] = {
    "day": UsageDaily.day,
    "key": UsageDaily.key_id,
    "model": UsageDaily.model,
    "route": UsageDaily.route,
}


def _report_row(groups: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: str(value) if name != "key" or value != NO_KEY else None
        for name, value in zip(groups, row, strict=False)
    }
    for name, value in zip(SUMMED, row[len(groups) :], strict=True):
        out[name] = float(value) if name.endswith("_usd") else int(value)
    return out


def period(params: Mapping[str, str]) -> tuple[date, date, tuple[str, ...]]:
    """``start``, ``end`` (dates, default this month so far) and ``group_by`` from a query."""
    today = datetime.now(UTC).date()
    try:
        start = date.fromisoformat(params.get("start", today.replace(day=1).isoformat()))
        end = date.fromisoformat(params.get("end", today.isoformat()))
    except ValueError as exc:
        raise BadRequest("start and end must be dates (YYYY-MM-DD)", param="start") from exc
    groups = tuple(params.get("group_by", "day").split(","))
    if not groups or len(set(groups)) != len(groups) or not set(groups) <= set(_GROUPS):
        raise BadRequest(
            "group_by must be day, key, model or route, or several joined by commas (key,model)",
            param="group_by",
        )
    return start, end, groups


async def recent(session: AsyncSession, workspace_id: str, limit: int = 20) -> list[UsageEvent]:
    """The workspace's latest requests, newest first (the console's list)."""
    rows = await session.scalars(
        select(UsageEvent)
        .where(UsageEvent.workspace_id == uuid.UUID(workspace_id))
        .order_by(UsageEvent.created_at.desc())
        .limit(limit)
    )
    return list(rows)


async def of_request(
    session: AsyncSession, workspace_id: str, request_id: str
) -> UsageEvent | None:
    """What one request used (its usage row), within the workspace."""
    row: UsageEvent | None = await session.scalar(
        select(UsageEvent)
        .where(
            UsageEvent.workspace_id == uuid.UUID(workspace_id), UsageEvent.request_id == request_id
        )
        .limit(1)
    )
    return row


async def refusals(
    session: AsyncSession, workspace_id: str, start: date, end: date
) -> dict[str, int]:
    """Requests turned away in the period, by kind (``rate_limit``, ``budget``)."""
    rows = await session.execute(
        select(UsageRefusal.kind, func.sum(UsageRefusal.refused))
        .where(UsageRefusal.workspace_id == uuid.UUID(workspace_id),
               UsageRefusal.day >= start, UsageRefusal.day <= end)
        .group_by(UsageRefusal.kind)
    )  # fmt: skip
    return {str(kind): int(total) for kind, total in rows}
