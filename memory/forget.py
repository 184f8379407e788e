"""Deleting memory for good: items, what was derived from them, and their term statistics.

One statement does it (``DELETE_ITEMS_SQL``, params ``:workspace_id`` and ``:ids``): the items
go, summaries and facts whose ``source_ids`` overlap them go too, and the document frequencies
of every embedded one are decremented (an item counts in ``term_stats`` iff it is embedded).
Rows whose neighbour context quoted a deleted item get it anew (``memory.neighbours``).
The gateway (async) and the workers (sync) both run it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from memory import neighbours

DELETE_ITEMS_SQL = text(
    """
WITH doomed AS (
    DELETE FROM memory_items
    WHERE workspace_id = :workspace_id AND id = ANY(:ids)
    RETURNING id, tsv, embedding IS NOT NULL AS counted
), derived AS (
    DELETE FROM memory_items d
    WHERE d.workspace_id = :workspace_id
      AND d.kind IN ('summary', 'fact')
      AND NOT (d.id = ANY(:ids))
      AND d.source_ids && CAST(:ids AS uuid[])
    RETURNING id, tsv, embedding IS NOT NULL AS counted
), gone AS (
    SELECT * FROM doomed UNION ALL SELECT * FROM derived
), lexemes AS (
    SELECT lexeme, count(*) AS n
    FROM gone, unnest(tsvector_to_array(tsv)) AS lexeme
    WHERE counted
    GROUP BY lexeme
), decremented AS (
    UPDATE term_stats t SET df = t.df - lexemes.n
    FROM lexemes
    WHERE t.workspace_id = :workspace_id AND t.lexeme = lexemes.lexeme
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM decremented) AS lexemes
"""
)

_PRUNE_STATS = text("DELETE FROM term_stats WHERE workspace_id = :workspace_id AND df <= 0")


def params(workspace_id: str | uuid.UUID, ids: Sequence[uuid.UUID | str]) -> dict[str, Any]:
    return {
        "workspace_id": uuid.UUID(str(workspace_id)),
        "ids": [uuid.UUID(str(i)) for i in ids],
    }


async def forget_items(
    session: AsyncSession, workspace_id: str, ids: Sequence[uuid.UUID | str]
) -> int:
    """Delete these items of this workspace (others' ids are silently ignored)."""
    if not ids:
        return 0
    deleted = (await session.execute(DELETE_ITEMS_SQL, params(workspace_id, ids))).scalar_one()
    await neighbours.refresh_quoting_async(session, workspace_id, ids)
    await session.execute(_PRUNE_STATS, {"workspace_id": uuid.UUID(str(workspace_id))})
    return int(deleted)


async def forget_where(
    session: AsyncSession,
    workspace_id: str,
    *,
    thread_id: str | None = None,
    end_user: str | None = None,
) -> int:
    """Every item of a thread or of an end user, and the thread rows themselves."""
    ws = uuid.UUID(workspace_id)
    if thread_id is not None:
        where, value = "thread_id = :value", thread_id
    elif end_user is not None:
        where, value = "end_user = :value", end_user
    else:
        raise ValueError("thread_id or end_user is required")
    ids = (
        await session.scalars(
            text(f"SELECT id FROM memory_items WHERE workspace_id = :ws AND {where}"),
            {"ws": ws, "value": value},
        )
    ).all()
    deleted = await forget_items(session, workspace_id, list(ids))
    await session.execute(
        text(
            f"DELETE FROM threads WHERE workspace_id = :ws AND {where.replace('thread_id', 'id')}"
        ),
        {"ws": ws, "value": value},
    )
    return deleted


def forget(
    session: Session, workspace_id: str | uuid.UUID, where_sql: str, params_: dict[str, Any]
) -> int:
    """Sync variant for workers: delete the workspace's items matching ``where_sql``."""
    ws = uuid.UUID(str(workspace_id))
    ids = session.scalars(
        text(f"SELECT id FROM memory_items WHERE workspace_id = :ws AND ({where_sql})"),
        {"ws": ws, **params_},
    ).all()
    if not ids:
        return 0
    deleted = session.execute(DELETE_ITEMS_SQL, params(ws, list(ids))).scalar_one()
    neighbours.refresh_quoting(session, ws, ids)
    session.execute(_PRUNE_STATS, {"workspace_id": ws})
    return int(deleted)
