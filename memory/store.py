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
from psycopg import AsyncConnection
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memory.offload import offload, text_size
from memory.outbox import EMBED, SUMMARIZE, record
from memory.redact import redact, redact_metadata
from memory.schema import MemoryItem
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


async def write_turn(
    conn: AsyncConnection[Any],
    scope: Scope,
    messages: Sequence[Any],
    answer: dict[str, Any] | None,
    *,
    summary_threshold: int,
    injection: InjectionRecord | None = None,
) -> list[uuid.UUID]:
    """Store the turn's new messages and the answer, their jobs, and what the request got
    injected, in one transaction of two statements; returns the ids of what was new.

    Plain SQL on a ``memory.db.ReadPool`` connection: the turn's write runs on every chat
    request, and through the ORM it took 9 round trips and ~2.5 ms of CPU (README "Memory-on
    chat throughput").
    """
    assert scope.thread_id is not None
    turns = conversation(messages)
    if answer is not None:
        turns = [*turns, answer]
    async with conn.transaction():
        cursor = await conn.execute(_LOCK_THREAD, _thread_params(scope))
        locked = await cursor.fetchone()
        assert locked is not None
        new = [(p, m) for p, m in enumerate(turns) if p >= locked[0]]
        rows = await offload(text_size(m for _, m in new), _message_rows, scope, new)
        params = {
            **_thread_params(scope), "ws_text": scope.workspace_id, "turns": len(turns),
            "facts": scope.facts,
            "threshold": summary_threshold, "embed": EMBED, "summarize": SUMMARIZE,
            "ids": [r["id"] for r in rows], "roles": [r["role"] for r in rows],
            "positions": [r["position"] for r in rows], "contents": [r["content"] for r in rows],
            "hashes": [r["content_hash"] for r in rows],
            "tokens": [r["token_count"] for r in rows], "metas": [dumps(r["meta"]) for r in rows],
        }  # fmt: skip
        sql = _SAVE_TURN
        if injection is not None:
            sql += f", injected AS ({_INJECTION})"
            params.update(_injection_params(injection))
        cursor = await conn.execute(sql + "\nSELECT ids FROM thread", params)
        saved = await cursor.fetchone()
    return [uuid.UUID(i) for i in saved[0]] if saved else []


async def record_injection(
    conn: AsyncConnection[Any], scope: Scope, injection: InjectionRecord
) -> None:
    """What a request got injected, when it stores no turn (one statement, autocommit)."""
    await conn.execute(_INJECTION, _thread_params(scope) | _injection_params(injection))


@dataclass(frozen=True)
class InjectionRecord:
    """A request's injection record: which items, how many tokens, and how it was placed."""

    request_id: str
    item_ids: list[uuid.UUID]
    tokens: int
    detail: dict[str, Any]


def _thread_params(scope: Scope) -> dict[str, Any]:
    return {"ws": uuid.UUID(scope.workspace_id), "thread": scope.thread_id,
            "end_user": scope.end_user}  # fmt: skip


def _injection_params(injection: InjectionRecord) -> dict[str, Any]:
    return {"request_id": injection.request_id, "injected_ids": injection.item_ids,
            "injected_tokens": injection.tokens, "detail": dumps(injection.detail)}  # fmt: skip


# The thread row, created or locked (an upsert takes the row lock either way, so two requests
# of one thread take turns), and how many of its messages are stored.
_LOCK_THREAD = """
INSERT INTO threads AS t (workspace_id, id, end_user, next_position, token_count,
                          summarized_position, unsummarized_tokens)
VALUES (%(ws)s, %(thread)s, %(end_user)s, 0, 0, 0, 0)
ON CONFLICT (workspace_id, id) DO UPDATE SET next_position = t.next_position
RETURNING t.next_position"""

# The new items (a concurrent duplicate position is a no-op), the thread's counters, and the
# jobs: embed what is new, extract facts when the workspace asks for them, summarise the thread
# once enough is unsummarised. Data-modifying CTEs run once each, referenced or not.
_SAVE_TURN = """
WITH new (id, role, position, content, content_hash, token_count, metadata) AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(roles)s::text[], %(positions)s::int[],
                         %(contents)s::text[], %(hashes)s::text[], %(tokens)s::int[],
                         %(metas)s::text[])
), ins AS (
    INSERT INTO memory_items (id, workspace_id, thread_id, end_user, kind, role, position,
                              content, content_hash, token_count, metadata)
    SELECT id, %(ws)s, %(thread)s, %(end_user)s, 'message', role, position, content,
           content_hash, token_count, metadata::jsonb
    FROM new
    ON CONFLICT (workspace_id, thread_id, position) WHERE kind = 'message' DO NOTHING
    RETURNING id, token_count
), added AS (
    SELECT coalesce(array_agg(id::text), '{}') AS ids, coalesce(sum(token_count), 0)::int AS tokens
    FROM ins
), thread AS (
    UPDATE threads AS t
    SET next_position = greatest(t.next_position, %(turns)s),
        token_count = t.token_count + a.tokens,
        unsummarized_tokens = t.unsummarized_tokens + a.tokens,
        updated_at = now()
    FROM added AS a
    WHERE t.workspace_id = %(ws)s AND t.id = %(thread)s
    RETURNING t.unsummarized_tokens, a.tokens, a.ids
), jobs AS (
    INSERT INTO outbox (queue, job, args)
    SELECT v.queue, v.job, v.args
    FROM thread, LATERAL (VALUES
        (%(embed)s, 'embed_items', jsonb_build_object('item_ids', to_jsonb(thread.ids)),
         cardinality(thread.ids) > 0),
        (%(summarize)s, 'extract_facts',
         jsonb_build_object('workspace_id', %(ws_text)s::text, 'item_ids', to_jsonb(thread.ids)),
         cardinality(thread.ids) > 0 AND %(facts)s),
        (%(summarize)s, 'refresh_summary',
         jsonb_build_object('workspace_id', %(ws_text)s::text, 'thread_id', %(thread)s::text),
         thread.unsummarized_tokens >= %(threshold)s AND thread.tokens > 0)
    ) AS v (queue, job, args, wanted)
    WHERE v.wanted
)"""
# A repeated request id (a client retry) keeps the first record.
_INJECTION = """
    INSERT INTO injections (request_id, workspace_id, thread_id, item_ids, tokens, detail)
    VALUES (%(request_id)s, %(ws)s, %(thread)s, %(injected_ids)s::uuid[], %(injected_tokens)s,
            %(detail)s::jsonb)
    ON CONFLICT (workspace_id, request_id) DO NOTHING"""


async def add_items(
    session: AsyncSession, workspace_id: str, items: Sequence[NewItem], *, pii: bool = False
) -> list[uuid.UUID]:
    """Notes (or facts, or messages) added through the memory API."""
    scope = Scope(workspace_id, None, None, pii)
    connection = await session.connection()
    for item in items:
        if item.thread_id:  # the thread row, created or locked as a chat turn's write does it
            thread = Scope(workspace_id, item.thread_id, item.end_user)
            await connection.exec_driver_sql(_LOCK_THREAD, _thread_params(thread))
    size = sum(len(i.content) + (len(dumps(i.metadata)) if i.metadata else 0) for i in items)
    rows = await offload(size, lambda: [_row(scope, item, None) for item in items])
    ids = await _insert(session, rows, conflict_on_position=False)
    record(session, EMBED, "embed_items", item_ids=[str(i) for i in ids])
    return ids


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
