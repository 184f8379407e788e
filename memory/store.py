"""Remembering (the *finish* stage): new turns and notes become items, their jobs in the outbox.

Clients resend the whole history each turn, so a message's identity in a thread is its
position among the non-system messages; a thread row (locked per save) records how many are
stored, and the unique (thread, position) index makes a concurrent duplicate a no-op. Items are
inserted unembedded; the embed job fills the vector. Redaction happens here, before storage.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memory.offload import offload, text_size
from memory.outbox import EMBED, SUMMARIZE, record
from memory.redact import redact, redact_metadata
from memory.schema import Injection, MemoryItem, Thread
from memory.tokens import count_text

_COUNT_MODEL = "gpt-4o"  # token counts of stored items: o200k, the common modern encoding
_SKIPPED_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class Scope:
    """Whose memory a request reads and writes."""

    workspace_id: str
    thread_id: str | None
    end_user: str | None
    pii: bool = False
    facts: bool = False


@dataclass
class NewItem:
    content: str
    kind: str = "note"
    role: str | None = None
    thread_id: str | None = None
    end_user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


def message_text(message: Any) -> str:
    """The text a message carries: string content, text parts, tool calls."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(f"[called {function.get('name')}({function.get('arguments') or ''})]")
    # PostgreSQL text cannot hold NUL; it carries no meaning for memory either.
    return "\n".join(p for p in parts if p).replace("\x00", "")


def conversation(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """The messages that count as turns (system and developer prompts are not memory)."""
    return [m for m in messages if isinstance(m, dict) and m.get("role") not in _SKIPPED_ROLES]


def content_hash(text_: str) -> str:
    return hashlib.sha256(text_.strip().encode("utf-8", "surrogatepass")).hexdigest()


async def save_turn(
    session: AsyncSession,
    scope: Scope,
    messages: Sequence[Any],
    answer: dict[str, Any] | None,
    *,
    summary_threshold: int,
) -> list[uuid.UUID]:
    """Store the turn's new messages and the answer; returns the ids of what was new."""
    assert scope.thread_id is not None
    turns = conversation(messages)
    if answer is not None:
        turns = [*turns, answer]
    stored = await _lock_thread(session, scope)
    new = [(p, m) for p, m in enumerate(turns) if p >= stored.next_position]
    rows = await offload(text_size(m for _, m in new), _message_rows, scope, new)
    ids = await _insert(session, rows, conflict_on_position=True)
    new_tokens = sum(r["token_count"] for r in rows if r["id"] in set(ids))
    stored.next_position = max(stored.next_position, len(turns))
    stored.token_count += new_tokens
    stored.unsummarized_tokens += new_tokens
    stored.updated_at = datetime.now().astimezone()
    if ids:
        record(session, EMBED, "embed_items", item_ids=[str(i) for i in ids])
        if scope.facts:
            record(
                session, SUMMARIZE, "extract_facts",
                workspace_id=scope.workspace_id, item_ids=[str(i) for i in ids],
            )  # fmt: skip
    if stored.unsummarized_tokens >= summary_threshold and new_tokens:
        record(
            session, SUMMARIZE, "refresh_summary",
            workspace_id=scope.workspace_id, thread_id=scope.thread_id,
        )  # fmt: skip
    return ids


async def add_items(
    session: AsyncSession, workspace_id: str, items: Sequence[NewItem], *, pii: bool = False
) -> list[uuid.UUID]:
    """Notes (or facts, or messages) added through the memory API."""
    scope = Scope(workspace_id, None, None, pii)
    for item in items:
        if item.thread_id:
            await _lock_thread(session, Scope(workspace_id, item.thread_id, item.end_user, pii))
    size = sum(len(i.content) + (len(dumps(i.metadata)) if i.metadata else 0) for i in items)
    rows = await offload(size, lambda: [_row(scope, item, None) for item in items])
    ids = await _insert(session, rows, conflict_on_position=False)
    record(session, EMBED, "embed_items", item_ids=[str(i) for i in ids])
    return ids


async def record_injection(
    session: AsyncSession,
    request_id: str,
    scope: Scope,
    item_ids: list[uuid.UUID],
    tokens: int,
    detail: dict[str, Any],
) -> None:
    """What a request got injected; a repeated request id (a client retry) keeps the first."""
    await session.execute(
        insert(Injection)
        .values(
            request_id=request_id,
            workspace_id=uuid.UUID(scope.workspace_id),
            thread_id=scope.thread_id,
            item_ids=item_ids,
            tokens=tokens,
            detail=detail,
        )
        .on_conflict_do_nothing(index_elements=["workspace_id", "request_id"])
    )


async def _lock_thread(session: AsyncSession, scope: Scope) -> Thread:
    workspace = uuid.UUID(scope.workspace_id)
    await session.execute(
        insert(Thread)
        .values(workspace_id=workspace, id=scope.thread_id, end_user=scope.end_user)
        .on_conflict_do_nothing()
    )
    thread = await session.scalar(
        select(Thread)
        .where(Thread.workspace_id == workspace, Thread.id == scope.thread_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert thread is not None
    return thread


def _message_rows(scope: Scope, new: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    rows = []
    for position, message in new:
        content = message_text(message)
        if content:
            item = NewItem(
                content, "message", str(message.get("role")), scope.thread_id, scope.end_user
            )
            rows.append(_row(scope, item, position))
    return rows


def _row(scope: Scope, item: NewItem, position: int | None) -> dict[str, Any]:
    """One item as stored: redacted (content and metadata), hashed, counted. CPU only."""
    content = redact(item.content.replace("\x00", ""), pii=scope.pii)
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "workspace_id": uuid.UUID(scope.workspace_id),
        "thread_id": item.thread_id,
        "end_user": item.end_user,
        "kind": item.kind,
        "role": item.role,
        "position": position,
        "content": content,
        "content_hash": content_hash(content),
        "token_count": count_text(content, _COUNT_MODEL),
        "meta": redact_metadata(item.metadata, pii=scope.pii),
    }
    if item.created_at is not None:
        row["created_at"] = item.created_at
    return row


async def _insert(
    session: AsyncSession, rows: list[dict[str, Any]], *, conflict_on_position: bool
) -> list[uuid.UUID]:
    if not rows:
        return []
    # created_at is optional per row; insert rows with and without it separately.
    ids: list[uuid.UUID] = []
    for group in (
        [r for r in rows if "created_at" in r],
        [r for r in rows if "created_at" not in r],
    ):
        if not group:
            continue
        stmt = insert(MemoryItem).values(group)
        if conflict_on_position:
            stmt = stmt.on_conflict_do_nothing(
                index_elements=["workspace_id", "thread_id", "position"],
                index_where=text("kind = 'message'"),
            )
        ids.extend((await session.scalars(stmt.returning(MemoryItem.id))).all())
    return ids


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
