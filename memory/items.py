"""What a workspace can do with its own memory: add, list, read and forget, as plain data.

The HTTP memory API (``gateway/surfaces/memory_api.py``) and the MCP tools
(``gateway/surfaces/mcp/``) both call these functions, so the two surfaces cannot drift apart.
Every query filters on the workspace id it is given; an id of another workspace is simply not
found (``None``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from memory import forget, store
from memory.schema import Injection, MemoryItem, Thread


@dataclass(frozen=True)
class ThreadPage:
    threads: list[Thread]
    has_more: bool


async def add(
    session: AsyncSession, workspace_id: str, items: Sequence[store.NewItem], *, pii: bool
) -> list[uuid.UUID]:
    return await store.add_items(session, workspace_id, list(items), pii=pii)


def parse_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


async def get_item(session: AsyncSession, workspace_id: str, raw_id: str) -> MemoryItem | None:
    item_id = parse_id(raw_id)
    if item_id is None:
        return None
    item: MemoryItem | None = await session.scalar(
        select(MemoryItem).where(
            MemoryItem.id == item_id, MemoryItem.workspace_id == uuid.UUID(workspace_id)
        )
    )
    return item


async def forget_item(session: AsyncSession, workspace_id: str, raw_id: str) -> bool:
    """Delete one item and what was derived from it; False when the workspace has no such item."""
    item = await get_item(session, workspace_id, raw_id)
    if item is None:
        return False
    await forget.forget_items(session, workspace_id, [item.id])
    return True


async def forget_thread(session: AsyncSession, workspace_id: str, thread_id: str) -> int | None:
    """Items deleted with the thread (summaries and facts too), or None when there is no thread."""
    if await session.get(Thread, (uuid.UUID(workspace_id), thread_id)) is None:
        return None
    return await forget.forget_where(session, workspace_id, thread_id=thread_id)


async def forget_user(session: AsyncSession, workspace_id: str, user: str) -> int:
    return await forget.forget_where(session, workspace_id, end_user=user)


async def list_threads(
    session: AsyncSession,
    workspace_id: str,
    *,
    user: str | None,
    limit: int,
    after: str | None = None,
) -> ThreadPage | None:
    """Newest first; ``after`` is the last thread id of the previous page (None if unknown)."""
    ws = uuid.UUID(workspace_id)
    query = select(Thread).where(Thread.workspace_id == ws)
    if user:
        query = query.where(Thread.end_user == user)
    if after:
        cursor = await session.get(Thread, (ws, after))
        if cursor is None:
            return None
        query = query.where(
            (Thread.updated_at < cursor.updated_at)
            | ((Thread.updated_at == cursor.updated_at) & (Thread.id < cursor.id))
        )
    rows = list(
        await session.scalars(
            query.order_by(Thread.updated_at.desc(), Thread.id.desc()).limit(limit + 1)
        )
    )
    return ThreadPage(rows[:limit], len(rows) > limit)


async def get_thread(
    session: AsyncSession, workspace_id: str, thread_id: str
) -> dict[str, Any] | None:
    """The thread with its messages, notes and facts, and its latest summary."""
    ws = uuid.UUID(workspace_id)
    thread = await session.get(Thread, (ws, thread_id))
    if thread is None:
        return None
    items = list(
        await session.scalars(
            select(MemoryItem)
            .where(MemoryItem.workspace_id == ws, MemoryItem.thread_id == thread_id)
            .order_by(MemoryItem.position.asc().nulls_last(), MemoryItem.created_at)
        )
    )
    summary = next((i for i in reversed(items) if i.kind == "summary"), None)
    body = thread_json(thread)
    body["messages"] = [item_json(i) for i in items if i.kind == "message"]
    body["notes"] = [item_json(i) for i in items if i.kind in ("note", "fact")]
    body["summary"] = item_json(summary) if summary else None
    return body


def item_json(item: MemoryItem) -> dict[str, Any]:
    return {
        "id": str(item.id),
        "object": "memory.item",
        "kind": item.kind,
        "role": item.role,
        "thread_id": item.thread_id,
        "user": item.end_user,
        "position": item.position,
        "content": item.content,
        "metadata": item.meta or {},
        "token_count": item.token_count,
        "created_at": int(item.created_at.timestamp()),
        "embedded": item.embedding is not None,
        "source_ids": [str(s) for s in item.source_ids] if item.source_ids else None,
    }


def thread_json(thread: Thread) -> dict[str, Any]:
    return {
        "id": thread.id,
        "object": "memory.thread",
        "user": thread.end_user,
        "message_count": thread.next_position,
        "token_count": thread.token_count,
        "created_at": int(thread.created_at.timestamp()),
        "updated_at": int(thread.updated_at.timestamp()),
    }


async def injection(
    session: AsyncSession, workspace_id: str, request_id: str
) -> dict[str, Any] | None:
    """What memory went into request ``request_id`` (its provenance), or None."""
    ws = uuid.UUID(workspace_id)
    row = await session.get(Injection, (request_id, ws))
    if row is None:
        return None
    found = {
        i.id: i
        for i in await session.scalars(
            select(MemoryItem).where(MemoryItem.workspace_id == ws, MemoryItem.id.in_(row.item_ids))
        )
    }
    return {
        "object": "memory.injection",
        "request_id": row.request_id,
        "thread_id": row.thread_id,
        "tokens": row.tokens,
        "created_at": int(row.created_at.timestamp()),
        "detail": row.detail,
        "items": [
            item_json(found[i]) if i in found
            else {"id": str(i), "object": "memory.item", "deleted": True}
            for i in row.item_ids
        ],
    }  # fmt: skip
