"""The memory the gateway talks to: recall before forwarding, remember after answering.

One ``Memory`` per gateway process, built in the lifespan. It owns the query-embedding cache
(embedding runs in a worker thread, off the event loop) and calls the outbox relay after each
commit so new turns are embedded within moments. Recall reads through ``reads`` (plain psycopg,
autocommit: ``memory.recall``); the turn is written through SQLAlchemy ``sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import candidates, context, store
from memory.db import ReadPool
from memory.embedder import Embedder
from memory.keys import QueryKeys, query_keys
from memory.offload import offload, text_size
from memory.ranker import Ranker
from memory.recall import (
    DocCounts,
    Filters,
    Hit,
    QueryTerms,
    entity_leg,
    fuse,
    lexical_leg,
    query_terms,
    thread_context,
    vector_leg,
    vector_literal,
)
from memory.redact import redact

T = TypeVar("T")
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
    ranker: Ranker | None = None  # None: the legs' weighted RRF (tests of the plumbing)


@dataclass
class Recalled:
    """What recall decided for one request."""

    messages: list[Any]
    injected: context.Injected
    dropped: int = 0
    thread_next_position: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    placement: context.Placement | None = None

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
        reads: ReadPool,
        embedder: Embedder,
        knobs: Knobs,
        relay: Relay | None = None,
    ) -> None:
        self.sessions = sessions
        self.reads = reads
        self.embedder = embedder
        self.knobs = knobs
        self.relay = relay
        self.counts = DocCounts(pool=reads)
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
        form: str = "user",
        breakpoint: bool = False,
    ) -> Recalled:
        timings: dict[str, float] = {"embed": 0.0}
        started = time.perf_counter()
        turns = store.conversation(messages)
        query = query_text(turns)
        filters = Filters(scope.workspace_id, scope.end_user)
        depth = self.knobs.candidates
        qkeys = query_keys(query)

        async def embed() -> str:
            vector = await self.embed_query(query)
            timings["embed"] = time.perf_counter() - started
            return vector

        # While the query is embedded (in a thread), the lexical leg runs on its own connection
        # and this one reads the thread and its summary (and, across a whole workspace, runs the
        # entity leg); only the vector leg, and a scoped entity leg, wait for the vector.
        async with (
            _meanwhile(embed() if query else _nothing()) as vector,
            _meanwhile(
                self._lexical(filters, query, depth, qkeys, vector) if query else _nothing()
            ) as text,
        ):
            # Counting, redacting and hashing the whole history: off the loop when it is big.
            trimmed, dropped, exclude = await offload(
                text_size(messages), _prepare, messages, turns, scope.pii,
                model, window, reserve + self.knobs.max_tokens,
            )  # fmt: skip
            async with self.reads.connection() as conn:
                next_position, summary = 0, None
                if scope.thread_id is not None:
                    next_position, summary = await thread_context(
                        conn, scope.workspace_id, scope.thread_id
                    )
                if not (dropped or len(turns) < next_position):
                    summary = None  # the request carries the thread's early history itself
                hits = await self._rank(conn, filters, qkeys, vector, text, depth)
        hits = [h for h in hits if h.content_hash not in exclude and self._relevant(h)]
        hits = hits[: self.knobs.max_items * 3]
        if summary is not None:
            hits = [h for h in hits if h.id != summary.id]
        injected = context.choose(
            hits, summary, max_tokens=self.knobs.max_tokens, max_items=self.knobs.max_items
        )
        timings["recall"] = time.perf_counter() - started
        forwarded, placement = context.inject(
            trimmed, injected.message, form=form, breakpoint=breakpoint
        )
        return Recalled(forwarded, injected, dropped, next_position, timings, placement)

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
        injection = None
        if recalled is not None:
            injected = recalled.injected
            ids = [h.id for h in injected.items]
            if injected.summary is not None:
                ids.insert(0, injected.summary.id)
            injection = store.InjectionRecord(
                request_id, ids, injected.tokens,
                {"dropped_turns": recalled.dropped, "timings_ms": {
                    k: round(v * 1000, 2) for k, v in recalled.timings.items()},
                 "placement": recalled.placement and recalled.placement.as_json()},
            )  # fmt: skip
        turn = write and scope.thread_id is not None
        if not turn and injection is None:
            return  # nothing to store: no connection taken
        async with self.reads.connection() as conn:
            if turn:
                await store.write_turn(
                    conn, scope, messages, answer,
                    summary_threshold=self.knobs.summary_threshold, injection=injection,
                )  # fmt: skip
            elif injection is not None:
                await store.record_injection(conn, scope, injection)
        self.kick()

    def kick(self) -> None:
        if self.relay is not None:
            self.relay.kick()

    async def search(
        self, filters: Filters, query: str, k: int,
        legs: tuple[str, ...] = ("vector", "lexical"), *, explain: bool = False,
    ) -> list[Hit]:  # fmt: skip
        """The memory API's search: the same pipeline as chat recall, or one leg alone."""
        depth = max(self.knobs.candidates, k) if len(legs) == 1 else self.knobs.candidates
        qkeys = query_keys(query)
        embedding = self.embed_query(query) if "vector" in legs else _nothing()
        lexical = "lexical" in legs and query.strip()
        # The embedding starts first (in a thread); the lexical leg runs meanwhile on its own
        # connection (then a scoped entity leg, once the vector is there), and across a whole
        # workspace the entity leg on this one.
        async with (
            _meanwhile(embedding) as vector,
            _meanwhile(
                self._lexical(filters, query, depth, qkeys, vector if len(legs) > 1 else None)
                if lexical
                else _nothing()
            ) as text,
        ):
            async with self.reads.connection() as conn:
                if len(legs) > 1:
                    hits = await self._rank(conn, filters, qkeys, vector, text, depth, explain)
                    return hits[:k]
                by_vector = None
                if "vector" in legs:
                    literal = await vector
                    assert literal is not None
                    by_vector = await vector_leg(conn, filters, literal, depth)
                found = await text
                hits = fuse(by_vector, found[1] if found else None, limit=k,
                            min_similarity=-1.0, both=False)  # fmt: skip
                if explain:
                    for rank, hit in enumerate(hits, 1):
                        leg_score = hit.similarity if by_vector is not None else hit.lexical
                        hit.explain = {"legs": {legs[0]: {"rank": rank, "score": leg_score}}}
                return hits

    async def _rank(
        self,
        conn: Any,
        filters: Filters,
        qkeys: QueryKeys,
        vector: Awaitable[str | None],
        text: Awaitable[tuple[QueryTerms, list[Hit], list[Hit] | None] | None],
        depth: int,
        explain: bool = False,
    ) -> list[Hit]:
        """Every leg, widened by neighbours and sessions, ranked by the fitted model."""
        by_entity = None
        if not filters.scoped:  # newest first, no vector needed: while the query is embedded
            by_entity = await entity_leg(conn, filters, qkeys.all(), depth)
        literal = await vector
        legs: dict[str, list[Hit]] = {}
        if literal is not None:
            legs["vector"] = await vector_leg(conn, filters, literal, depth)
        lexical = await text
        terms = lexical[0] if lexical else None
        legs["lexical"] = lexical[1] if lexical else []
        by_entity = by_entity if by_entity is not None else lexical[2] if lexical else None
        if by_entity is None:
            by_entity = await entity_leg(conn, filters, qkeys.all(), depth, literal)
        legs["entity"] = by_entity
        found = candidates.pool(legs)
        await candidates.widen(conn, filters, found, terms, literal)
        ranked = candidates.featurize(found, qkeys)
        ranker = self.knobs.ranker
        if ranker is None:  # the legs' RRF order (tests of the plumbing); prelim sorts the pool
            order = {c.hit.id: i for i, c in enumerate(candidates.prelim(found))}
        for c in ranked:
            c.hit.score = ranker.score(c.features) if ranker else -float(order[c.hit.id])
            c.hit.lexical = c.bm25 + c.bm25_context if terms else c.hit.lexical
            c.hit.explain = _explain(c) if explain else None
            c.hit.matched = bool(c.bm25 or c.bm25_context or c.features["names"])
        ranked.sort(key=lambda c: (c.hit.score, c.hit.created_at), reverse=True)
        return [c.hit for c in ranked]

    def _relevant(self, hit: Hit) -> bool:
        """Chat injection: a hit with no shared word or name must clear the similarity floor."""
        return hit.matched or (hit.similarity or 0.0) >= self.knobs.min_similarity

    async def _lexical(
        self,
        filters: Filters,
        query: str,
        depth: int,
        qkeys: QueryKeys,
        vector: Awaitable[str | None] | None,
    ) -> tuple[QueryTerms, list[Hit], list[Hit] | None]:
        """The lexical leg; with ``vector``, then (within an end user or thread: it orders by
        the vector) the entity leg on the same connection."""
        async with self.reads.connection() as conn:
            terms = await query_terms(conn, filters, query, self.counts)
            hits = await lexical_leg(
                conn, filters, query, depth, self.counts, terms, exact=vector is None
            )
            if vector is None or not filters.scoped:
                return terms, hits, None
            return terms, hits, await entity_leg(conn, filters, qkeys.all(), depth, await vector)


def _explain(c: candidates.Candidate) -> dict[str, Any]:
    return {
        "legs": {leg: {"rank": rank, "score": round(score, 6)} for leg, (rank, score)
                 in c.legs.items()},
        "features": {name: round(value, 6) for name, value in c.features.items()},
    }  # fmt: skip


@contextlib.asynccontextmanager
async def _meanwhile(work: Awaitable[T]) -> AsyncIterator[asyncio.Task[T]]:
    """``work`` as a task running alongside the block; cancelled when the block fails."""
    task = asyncio.ensure_future(work)
    try:
        yield task
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise


def _prepare(
    messages: list[Any], turns: list[dict[str, Any]], pii: bool, model: str, window: int,
    reserve: int,
) -> tuple[list[Any], int, frozenset[str]]:  # fmt: skip
    """The messages fitted to the window, and the hashes of what the request already holds."""
    trimmed, dropped = context.fit_window(messages, model, window, reserve)
    exclude = frozenset(
        store.content_hash(redact(store.message_text(m), pii=pii, counted=False)) for m in turns
    )
    return trimmed, dropped, exclude


async def _nothing() -> None:
    return None


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
