"""The memory the gateway talks to: recall before forwarding, remember after answering.

One ``Memory`` per gateway process, built in the lifespan. It owns the query-embedding cache
(embedding runs in a worker thread, off the event loop) and calls the outbox relay after each
commit so new turns are embedded within moments.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import context, store
from memory.embedder import Embedder
from memory.recall import DocCounts, Filters, Hit, vector_literal
from memory.recall import search as hybrid_search
from memory.redact import redact
from memory.schema import MemoryItem

_QUERY_CACHE = 2_000  # ~4.5 KB each as a pgvector literal: ~9 MiB when full
_SHORT_QUERY_WORDS = 8


class Relay(Protocol):
    def kick(self) -> None: ...


@dataclass(frozen=True)
class Knobs:
    max_tokens: int
    max_items: int
    min_similarity: float
    candidates: int
    summary_threshold: int


@dataclass
class Recalled:
    """What recall decided for one request."""

    messages: list[Any]
    injected: context.Injected
    dropped: int = 0
    thread_next_position: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def headers(self, thread_id: str | None) -> dict[str, str]:
        headers = {
            "X-Memory-Items": str(len(self.injected.items) + (1 if self.injected.summary else 0)),
            "X-Memory-Tokens": str(self.injected.tokens),
        }
        if thread_id:
            headers["X-Memory-Thread"] = thread_id
        if self.dropped:
            headers["X-Memory-Context-Trimmed"] = str(self.dropped)
        return headers


class Memory:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        embedder: Embedder,
        knobs: Knobs,
        relay: Relay | None = None,
    ) -> None:
        self.sessions = sessions
        self.embedder = embedder
        self.knobs = knobs
        self.relay = relay
        self.counts = DocCounts()
        self._vectors: OrderedDict[str, str] = OrderedDict()

    async def embed_query(self, query: str) -> str:
        """The query's vector as a pgvector literal (cached: compact, and what SQL takes)."""
        cached = self._vectors.get(query)
        if cached is not None:
            self._vectors.move_to_end(query)
            return cached
        matrix = await asyncio.to_thread(self.embedder.embed, [query])
        vector = vector_literal(matrix[0])
        self._vectors[query] = vector
        if len(self._vectors) > _QUERY_CACHE:
            self._vectors.popitem(last=False)
        return vector

    async def recall(
        self,
        scope: store.Scope,
        messages: list[Any],
        *,
        model: str,
        window: int,
        reserve: int,
    ) -> Recalled:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        turns = store.conversation(messages)
        query = query_text(turns)
        vector = await self.embed_query(query) if query else None
        timings["embed"] = time.perf_counter() - started
        trimmed, dropped = context.fit_window(
            messages, model, window, reserve + self.knobs.max_tokens
        )
        exclude = frozenset(
            store.content_hash(redact(store.message_text(m), pii=scope.pii)) for m in turns
        )
        async with self.sessions() as session:
            thread = await store.thread_state(session, scope)
            next_position = thread.next_position if thread is not None else 0
            summary = None
            if thread is not None and (dropped or len(turns) < next_position):
                summary = await _summary(session, scope)
            hits = []
            if query:
                hits = await hybrid_search(
                    session,
                    Filters(scope.workspace_id, scope.end_user),
                    query,
                    vector,
                    limit=self.knobs.max_items * 3,
                    candidates=self.knobs.candidates,
                    min_similarity=self.knobs.min_similarity,
                    counts=self.counts,
                    exclude_hashes=exclude,
                )
            await session.rollback()
        if summary is not None:
            hits = [h for h in hits if h.id != summary.id]
        injected = context.choose(
            hits, summary, max_tokens=self.knobs.max_tokens, max_items=self.knobs.max_items
        )
        timings["recall"] = time.perf_counter() - started
        return Recalled(
            context.inject(trimmed, injected.message), injected, dropped, next_position, timings
        )

    async def remember(
        self,
        scope: store.Scope,
        messages: Sequence[Any],
        answer: dict[str, Any] | None,
        *,
        write: bool,
        request_id: str,
        recalled: Recalled | None,
    ) -> None:
        """Commit the turn (when writing) and what was injected, then wake the outbox relay."""
        async with self.sessions.begin() as session:
            if write and scope.thread_id is not None:
                await store.save_turn(
                    session, scope, messages, answer,
                    summary_threshold=self.knobs.summary_threshold,
                )  # fmt: skip
            if recalled is not None:
                injected = recalled.injected
                ids = [h.id for h in injected.items]
                if injected.summary is not None:
                    ids.insert(0, injected.summary.id)
                await store.record_injection(
                    session, request_id, scope, ids, injected.tokens,
                    {"dropped_turns": recalled.dropped, "timings_ms": {
                        k: round(v * 1000, 2) for k, v in recalled.timings.items()}},
                )  # fmt: skip
        self.kick()

    def kick(self) -> None:
        if self.relay is not None:
            self.relay.kick()

    async def search(
        self, filters: Filters, query: str, k: int,
        legs: tuple[str, ...] = ("vector", "lexical"),
    ) -> list[Hit]:  # fmt: skip
        vector = await self.embed_query(query) if "vector" in legs else None
        async with self.sessions() as session:
            hits = await hybrid_search(
                session, filters, query, vector, limit=k, candidates=max(self.knobs.candidates, k),
                min_similarity=-1.0, counts=self.counts, legs=legs,
            )  # fmt: skip
            await session.rollback()
        return hits


def query_text(turns: Sequence[Any]) -> str:
    """The latest user turn, with the one before it when the latest is short."""
    users = [store.message_text(m) for m in turns if m.get("role") == "user"]
    users = [u for u in users if u.strip()]
    if not users:
        return ""
    query = users[-1]
    if len(users) > 1 and len(query.split()) < _SHORT_QUERY_WORDS:
        query = users[-2] + "\n" + query
    return query[-4000:].replace("\x00", "")


async def _summary(session: AsyncSession, scope: store.Scope) -> Hit | None:
    row = await session.scalar(
        select(MemoryItem)
        .where(
            MemoryItem.workspace_id == uuid.UUID(scope.workspace_id),
            MemoryItem.thread_id == scope.thread_id,
            MemoryItem.kind == "summary",
        )
        .order_by(MemoryItem.created_at.desc())
        .limit(1)
    )
    if row is None:
        return None
    return Hit(
        row.id, row.kind, row.role, row.thread_id, row.end_user, row.content, row.content_hash,
        row.token_count, row.meta or {}, row.created_at,
    )  # fmt: skip
