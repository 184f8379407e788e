"""Context indexing: each turn is stored with the turns around it in its conversation.

A turn often only makes sense next to the one before it ("Researching adoption agencies"
answers "what are your plans for the summer?"). An item's conversation is its thread, or, for
unthreaded items, its end user's other unthreaded items; its neighbours are the nearest items
before and after it there by ``(created_at, position, id)``. ``context`` holds their text (the
full-text leg matches it through ``ctx_tsv``) and ``context_ids`` their ids, so that

- a new item refreshes its own context and then its neighbours' (it is now theirs);
- deleting an item refreshes every row that quotes it (``memory.forget``): deleted text never
  survives in another row's context.

Summaries and facts are derived items: they have no neighbours and are nobody's neighbour.
The sync (worker) and async (gateway delete) callers run the same statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

INDEX_VERSION = 2  # bump when what the worker indexes changes: `cmg memory reindex` redoes it
QUOTE_CHARS = 1000  # of each neighbour: a long answer adds its start, not its whole text
TURN_KINDS = ("message", "note")

_SIDE = """
    LEFT JOIN LATERAL (
        SELECT x.id, x.content FROM memory_items AS x
        WHERE x.workspace_id = t.workspace_id AND x.kind IN ('message', 'note')
          AND coalesce(x.thread_id, '') = t.th AND coalesce(x.end_user, '') = t.eu
          AND x.created_at {cmp}= t.created_at
          AND (x.created_at, coalesce(x.position, -1), x.id) {cmp} (t.created_at, t.pos, t.id)
        ORDER BY x.created_at {order}, coalesce(x.position, -1) {order}, x.id {order} LIMIT 1
    ) AS {alias} ON true"""

REFRESH_SQL = text(
    f"""
WITH target AS (
    SELECT id, workspace_id, coalesce(thread_id, '') AS th, coalesce(end_user, '') AS eu,
           created_at, coalesce(position, -1) AS pos
    FROM memory_items
    WHERE workspace_id = :workspace_id AND id = ANY(CAST(:ids AS uuid[]))
      AND kind IN ('message', 'note')
), around AS (
    SELECT t.id, p.id AS prev_id, p.content AS prev, n.id AS next_id, n.content AS next
    FROM target AS t
    {_SIDE.format(cmp="<", order="DESC", alias="p")}
    {_SIDE.format(cmp=">", order="ASC", alias="n")}
)
UPDATE memory_items AS m
SET context = nullif(
        concat_ws(E'\\n', left(a.prev, {QUOTE_CHARS}), left(a.next, {QUOTE_CHARS})), ''),
    context_ids = array_remove(ARRAY[a.prev_id, a.next_id], NULL)
FROM around AS a
WHERE m.id = a.id
RETURNING m.context_ids
"""
)
QUOTING_SQL = text(
    "SELECT id FROM memory_items WHERE workspace_id = :workspace_id "
    "AND context_ids && CAST(:ids AS uuid[])"
)


def _params(workspace_id: uuid.UUID | str, ids: Sequence[uuid.UUID | str]) -> dict[str, Any]:
    return {"workspace_id": uuid.UUID(str(workspace_id)), "ids": [uuid.UUID(str(i)) for i in ids]}


def refresh(session: Session, workspace_id: uuid.UUID | str, ids: Sequence[uuid.UUID]) -> int:
    """New (or re-indexed) items: their context, then their neighbours'. Returns rows updated."""
    if not ids:
        return 0
    around = session.execute(REFRESH_SQL, _params(workspace_id, ids)).scalars().all()
    others = {i for quoted in around for i in quoted or ()} - set(ids)
    if others:
        session.execute(REFRESH_SQL, _params(workspace_id, sorted(others)))
    return len(around) + len(others)


def refresh_quoting(session: Session, workspace_id: uuid.UUID | str, gone: Sequence[Any]) -> None:
    """After deleting ``gone``: every row that quoted one of them gets its context anew."""
    if gone:
        quoting = session.execute(QUOTING_SQL, _params(workspace_id, gone)).scalars().all()
        if quoting:
            session.execute(REFRESH_SQL, _params(workspace_id, quoting))


async def refresh_quoting_async(
    session: AsyncSession, workspace_id: uuid.UUID | str, gone: Sequence[Any]
) -> None:
    if gone:
        result = await session.execute(QUOTING_SQL, _params(workspace_id, gone))
        quoting = result.scalars().all()
        if quoting:
            await session.execute(REFRESH_SQL, _params(workspace_id, quoting))
