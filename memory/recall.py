"""The *recall* stage: hybrid search over one workspace's memory, fused by weighted RRF.

- vector leg: pgvector cosine top-N on the HNSW index, with pgvector 0.8 iterative index
  scans so the workspace (and end-user / thread) filter never starves the result;
- lexical leg: Postgres full text, but not AND-ed: the query's lexemes are OR-ed (a natural
  question rarely shares every word with the fact it asks about), very common ones dropped, and
  ranked by BM25 with document frequencies from ``term_stats`` (plain ``ts_rank`` ignores how
  rare a word is). Candidates come from the ``(workspace_id, tsv)`` GIN index; in a large
  workspace only from its rarest lexemes; SQL ranks them by BM25 with term frequencies taken as
  1, and the top ones are re-ranked by exact BM25 here.
- fusion: ``w_lex/(k+rank_lex) + w_vec/(k+rank_vec)``; recency breaks ties. A hit found only by
  the vector leg must clear a similarity floor, so unrelated memory is not injected.
Every statement filters on ``workspace_id``.

The legs run on plain psycopg connections in autocommit mode from ``memory.db.ReadPool``, not
through SQLAlchemy: on this hot path each statement is one round trip, with no BEGIN, ROLLBACK or
pool ping around it (measured: a SELECT 1 through an AsyncSession 1.2 ms of CPU, raw 0.2 ms).
Rows come back in binary (``binary=True``): uuids, uuid arrays, timestamps and floats decode
without parsing text (the candidate read of ~120 rows: 3.4 → 2.8 ms, README "Recall latency").

The legs and the candidate read are never prepared (``prepare=False``): psycopg prepares a
statement run five times on a connection, and Postgres then settles on one generic plan for
every value. Their best plan depends on the values: a name in 30 items wants the keys index, a
year in all of them the newest-first walk; a small end user an exact scan, a large one HNSW. A
generic plan took the walk for a rare name: 69 ms against ~2 (README "Recall latency").
Per statement, not a session setting: it holds behind a transaction-mode pooler too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from memory.db import ReadPool

Conn = AsyncConnection[Any]

# Tuned on `make eval` (README "Recall quality"): with lexemes in more than 2% of the documents
# left out, the lexical leg is precise, and at 20 candidates per leg these lose nothing against
# 50 (the earlier W_VECTOR 1.5 / RRF_K 10 lost 0.025 R@5 there); the result is flat across RRF_K.
RRF_K = 5
W_LEXICAL = 1.0
W_VECTOR = 0.5
W_CONTEXT = 0.5  # a neighbour's words count half as much as the item's own (README "Recall")
_BM25_K1 = 1.2
_BM25_B = 0.75
_MAX_QUERY_LEXEMES = 16
_MIN_QUERY_LEXEMES = 2  # when every lexeme is common, the rarest ones still search
_COMMON_FRACTION = 0.02  # lexemes in more than 2% of the documents add noise, not signal
_CANDIDATE_DOCS = 1000  # the lexical leg's candidates come from the rarest lexemes up to this


@dataclass
class Hit:
    id: uuid.UUID
    kind: str
    role: str | None
    thread_id: str | None
    end_user: str | None
    content: str
    content_hash: str
    token_count: int
    metadata: dict[str, Any]
    created_at: datetime
    score: float = 0.0
    similarity: float | None = None
    lexical: float | None = None
    explain: dict[str, Any] | None = None
    matched: bool = True  # shares a word or a name with the query (else: the similarity floor)
    context_ids: list[uuid.UUID] = field(default_factory=list)  # its neighbours (widening)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "object": "memory.item",
            "kind": self.kind,
            "role": self.role,
            "thread_id": self.thread_id,
            "user": self.end_user,
            "content": self.content,
            "metadata": self.metadata,
            "created_at": int(self.created_at.timestamp()),
            "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "lexical_score": None if self.lexical is None else round(self.lexical, 6),
            **({"explain": self.explain} if self.explain is not None else {}),
        }


@dataclass(frozen=True)
class Filters:
    workspace_id: str
    end_user: str | None = None
    thread_id: str | None = None

    @property
    def scoped(self) -> bool:
        """Within one end user or thread: a few thousand rows, not a whole workspace."""
        return self.end_user is not None or self.thread_id is not None

    def sql(self) -> tuple[str, dict[str, Any]]:
        clauses = ["workspace_id = %(ws)s", "superseded_by IS NULL"]
        params: dict[str, Any] = {"ws": uuid.UUID(self.workspace_id)}
        if self.end_user is not None:
            clauses.append("end_user = %(end_user)s")
            params["end_user"] = self.end_user
        if self.thread_id is not None:
            clauses.append("thread_id = %(thread_id)s")
            params["thread_id"] = self.thread_id
        return " AND ".join(clauses), params


_COLUMNS = (
    "id, kind, role, thread_id, end_user, content, content_hash, token_count, metadata, "
    "created_at, context_ids"
)


class DocCounts:
    """Documents per workspace and their average length (BM25's N and avgdl), cached.

    Counting takes ~150 ms at 100k items and the figures move slowly, so with ``pool`` an
    expired entry is still served while one background refresh replaces it.
    """

    def __init__(self, ttl: float = 30.0, pool: ReadPool | None = None) -> None:
        self._ttl = ttl
        self._pool = pool
        self._cache: dict[str, tuple[float, int, float]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    async def get(self, conn: Conn, workspace_id: str) -> tuple[int, float]:
        hit = self._cache.get(workspace_id)
        if hit is None or (hit[0] <= time.monotonic() and self._pool is None):
            return await self._count(conn, workspace_id)
        if hit[0] <= time.monotonic() and workspace_id not in self._refreshing:
            task = asyncio.create_task(self._refresh(workspace_id))
            self._refreshing[workspace_id] = task
            task.add_done_callback(lambda _: self._refreshing.pop(workspace_id, None))
        return hit[1], hit[2]

    async def _refresh(self, workspace_id: str) -> None:
        assert self._pool is not None
        with contextlib.suppress(Exception):  # keep serving the old figures
            async with self._pool.connection() as conn:
                await self._count(conn, workspace_id)

    async def _count(self, conn: Conn, workspace_id: str) -> tuple[int, float]:
        cursor = await conn.execute(
            "SELECT count(*), coalesce(avg(length(tsv)), 1) FROM memory_items "
            "WHERE workspace_id = %(ws)s AND embedding IS NOT NULL",
            {"ws": uuid.UUID(workspace_id)},
        )
        row = await cursor.fetchone()
        assert row is not None
        n, avg = int(row[0]), float(row[1]) or 1.0
        self._cache[workspace_id] = (time.monotonic() + self._ttl, n, avg)
        return n, avg


async def search(
    conn: Conn,
    filters: Filters,
    query: str,
    vector: str | Sequence[float] | None,
    *,
    limit: int,
    candidates: int,
    min_similarity: float,
    counts: DocCounts,
    exclude_hashes: frozenset[str] = frozenset(),
    legs: tuple[str, ...] = ("vector", "lexical"),
) -> list[Hit]:
    """Both legs one after the other on one connection, fused (``Memory`` overlaps them)."""
    by_vector = by_text = None
    if "vector" in legs and vector is not None:
        by_vector = await vector_leg(conn, filters, vector, candidates)
    if "lexical" in legs and query.strip():
        by_text = await lexical_leg(conn, filters, query, candidates, counts)
    return fuse(
        by_vector, by_text, limit=limit, min_similarity=min_similarity,
        exclude_hashes=exclude_hashes, both=len(legs) > 1,
    )  # fmt: skip


def fuse(
    by_vector: list[Hit] | None,
    by_text: list[Hit] | None,
    *,
    limit: int,
    min_similarity: float,
    exclude_hashes: frozenset[str] = frozenset(),
    both: bool = True,
) -> list[Hit]:
    """Weighted RRF of the two legs' rankings; ``both``: a vector-only hit needs the floor."""
    hits: dict[uuid.UUID, Hit] = {}
    fused: dict[uuid.UUID, float] = {}
    for rank, hit in enumerate(by_vector or ()):
        hits[hit.id] = hit
        fused[hit.id] = fused.get(hit.id, 0.0) + W_VECTOR / (RRF_K + rank + 1)
    for rank, hit in enumerate(by_text or ()):
        known = hits.setdefault(hit.id, hit)
        known.lexical = hit.lexical
        fused[hit.id] = fused.get(hit.id, 0.0) + W_LEXICAL / (RRF_K + rank + 1)
    ranked = []
    for item_id, score in fused.items():
        hit = hits[item_id]
        if hit.content_hash in exclude_hashes:
            continue
        if hit.lexical is None and both and (hit.similarity or 0.0) < min_similarity:
            continue
        hit.score = score
        ranked.append(hit)
    ranked.sort(key=lambda h: (h.score, h.created_at), reverse=True)
    return ranked[:limit]


async def vector_leg(
    conn: Conn, filters: Filters, vector: str | Sequence[float], n: int
) -> list[Hit]:
    """The ``n`` nearest items (pgvector 0.8 iterative scan, relaxed order: re-sorted here)."""
    await _tune_vector_scan(conn, n)
    where, params = filters.sql()
    literal = vector if isinstance(vector, str) else vector_literal(vector)
    params.update(q=literal, n=n)
    # ORDER BY the selected distance: HNSW still serves it, and where the planner sorts a small
    # scope exactly instead, each vector is read and compared once, not twice (README "Recall
    # latency"). 1 - distance here is the same double as in SQL.
    cursor = await conn.execute(
        f"SELECT {_COLUMNS}, embedding <=> %(q)s::vector AS distance "
        f"FROM memory_items WHERE {where} AND embedding IS NOT NULL "
        "ORDER BY distance LIMIT %(n)s",
        params,
        binary=True,
        prepare=False,
    )
    hits = [_hit(row, similarity=1 - float(row[-1])) for row in await cursor.fetchall()]
    hits.sort(key=lambda h: h.similarity or 0.0, reverse=True)
    return hits


# The HNSW scan settings each pooled connection has (session-level: the connections autocommit),
# so a statement goes out only when a leg needs other ones (a search with k above the default).
_TUNED: weakref.WeakKeyDictionary[Conn, int] = weakref.WeakKeyDictionary()


async def _tune_vector_scan(conn: Conn, n: int) -> None:
    ef = max(40, min(n * 2, 400))
    if _TUNED.get(conn) == ef:
        return
    await conn.execute(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', false), "
        "set_config('hnsw.ef_search', %(ef)s, false)",
        {"ef": str(ef)},
    )
    _TUNED[conn] = ef


async def thread_context(conn: Conn, workspace_id: str, thread_id: str) -> tuple[int, Hit | None]:
    """A thread's next message position (0: unknown thread) and its latest summary, at once."""
    cursor = await conn.execute(
        f"SELECT t.next_position, s.* FROM threads AS t LEFT JOIN LATERAL ("
        f"SELECT {_COLUMNS} FROM memory_items AS m WHERE m.workspace_id = t.workspace_id "
        "AND m.thread_id = t.id AND m.kind = 'summary' ORDER BY m.created_at DESC LIMIT 1"
        ") AS s ON true WHERE t.workspace_id = %(ws)s AND t.id = %(thread)s",
        {"ws": uuid.UUID(workspace_id), "thread": thread_id},
    )
    row = await cursor.fetchone()
    if row is None:
        return 0, None
    return int(row[0]), (_hit(row[1:]) if row[1] is not None else None)


@dataclass(frozen=True)
class QueryTerms:
    """A query's lexemes with their document frequency and BM25 idf in one workspace."""

    df: dict[str, int]
    idf: dict[str, float]
    useful: list[str]  # rarest first; very common lexemes dropped
    total: int
    avg_len: float


async def query_terms(conn: Conn, filters: Filters, query: str, counts: DocCounts) -> QueryTerms:
    cursor = await conn.execute(
        "SELECT q.lexeme, coalesce(t.df, 0) AS df "
        "FROM unnest(tsvector_to_array(to_tsvector('english', %(query)s))) AS q(lexeme) "
        "LEFT JOIN term_stats t ON t.workspace_id = %(ws)s AND t.lexeme = q.lexeme",
        {"query": query[:2000], "ws": uuid.UUID(filters.workspace_id)},
    )
    stats = await cursor.fetchall()
    total, avg_len = await counts.get(conn, filters.workspace_id)
    df = {lexeme: int(count) for lexeme, count in stats}
    idf = {lexeme: _idf(total, count) for lexeme, count in df.items()}
    known = sorted((lex for lex, count in df.items() if count), key=lambda lex: (df[lex], lex))
    useful = [lex for lex in known if total < 20 or df[lex] <= _COMMON_FRACTION * total]
    # A question made only of common words still searches by its rarest ones: in one end
    # user's memory "hike" can be in 3% of the turns and still be what the question is about.
    useful = (useful or known[:_MIN_QUERY_LEXEMES])[:_MAX_QUERY_LEXEMES]
    return QueryTerms(df, idf, useful, total, avg_len)


async def lexical_leg(
    conn: Conn, filters: Filters, query: str, n: int, counts: DocCounts,
    terms: QueryTerms | None = None, *, exact: bool = True,
) -> list[Hit]:  # fmt: skip
    """BM25 over each item's own text plus, weighted by ``W_CONTEXT``, its neighbours' text.

    ``exact=False``: the SQL ranking (term frequencies taken as 1) is the answer, for callers
    that score the candidates again (the ranker): no tsvectors fetched and parsed here.
    """
    where, params = filters.sql()
    terms = terms or await query_terms(conn, filters, query, counts)
    df, idf, useful, avg_len = terms.df, terms.idf, terms.useful, terms.avg_len
    if not useful:
        return []
    own = " + ".join(f"(tsv @@ %(lex{i})s::tsquery)::int * %(idf{i})s" for i in range(len(useful)))
    for i, lexeme in enumerate(useful):
        params[f"lex{i}"], params[f"idf{i}"] = _quote_lexeme(lexeme), idf[lexeme]
    # Scoped to an end user or thread, the planner reads that scope's rows instead: no cap, and
    # items match through their neighbours' words too. Across a whole large workspace that
    # doubles the rows scored (README "Recall latency"): there only the widening (the top
    # hits' neighbours) brings the context in.
    scoped = filters.scoped
    candidates = useful if scoped else _rarest(useful, df)
    around, either = "0", "tsv @@ %(tsq)s::tsquery"
    if scoped:
        around = own.replace("(tsv @@", "(ctx_tsv @@")
        either = f"({either} OR ctx_tsv @@ %(tsq)s::tsquery)"
    params.update(
        tsq=" | ".join(_quote_lexeme(lex) for lex in candidates), avg=avg_len,
        n=max(2 * n, 40) if exact else n,
    )  # fmt: skip
    # BM25 with every term frequency taken as 1 ranks the candidates in SQL; only the top
    # ones come back, with their tsvectors as text for the exact BM25 below.
    norm = f"(1 + {_BM25_K1} * (1 - {_BM25_B} + {_BM25_B} * length(%s) / %%(avg)s::float8))"
    texts = "tsv::text, ctx_tsv::text" if exact else "approx"
    cursor = await conn.execute(
        f"SELECT {_COLUMNS}, {texts} FROM ("
        f"SELECT {_COLUMNS}, tsv, ctx_tsv, ({own}) / {norm % 'tsv'} + "
        f"{W_CONTEXT} * ({around}) / {norm % 'ctx_tsv'} / 2 AS approx "
        f"FROM memory_items WHERE {where} AND {either} "
        "ORDER BY approx DESC, created_at DESC LIMIT %(n)s) AS top",
        params,
        binary=True,
        prepare=False,
    )
    hits = []
    for row in await cursor.fetchall():
        hit = _hit(row)
        if not exact:
            hit.lexical = float(row[-1])
            hits.append(hit)
            continue
        hit.lexical = _bm25(_term_freqs(row[-2]), idf, avg_len) + W_CONTEXT * _bm25(
            _term_freqs(row[-1]), idf, 2 * avg_len
        )
        hits.append(hit)
    hits.sort(key=lambda h: (h.lexical or 0.0, h.created_at), reverse=True)
    return hits[:n]


async def entity_leg(
    conn: Conn, filters: Filters, keys: Sequence[str], n: int, vector: str | None = None
) -> list[Hit]:
    """Items whose ingest-time keys (``memory.keys``) share the most with the question's.

    Within one end user or thread: most keys shared first, then nearest the query vector.
    Across a whole workspace a name can match thousands of items: newest first, without
    counting shared keys or computing distances (README "Recall latency").
    """
    if not keys:
        return []
    where, params = filters.sql()
    params.update(keys=list(keys)[:_MAX_QUERY_LEXEMES], n=n)
    order = "created_at DESC"
    if filters.scoped:
        order = (
            "cardinality(ARRAY(SELECT unnest(keys) INTERSECT SELECT unnest(%(keys)s::text[]))) "
            "DESC, " + ("embedding <=> %(q)s::vector" if vector is not None else order)
        )
        if vector is not None:
            params["q"] = vector
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM memory_items WHERE {where} AND embedding IS NOT NULL "
        f"AND keys && %(keys)s::text[] ORDER BY {order} LIMIT %(n)s",
        params,
        binary=True,
        prepare=False,
    )
    return [_hit(row) for row in await cursor.fetchall()]


def _rarest(useful: list[str], df: dict[str, int]) -> list[str]:
    """The rarest lexemes whose documents add up to about ``_CANDIDATE_DOCS`` (at least one).

    Matching every useful lexeme costs a heap visit and a ranking per matching item: thousands
    in a large workspace. An item matching none of the rare lexemes rarely makes the BM25 top
    anyway (README "Recall latency": agreement with BM25 over every match).
    """
    chosen: list[str] = []
    docs = 0
    for lexeme in useful:  # rarest first
        if chosen and docs + df[lexeme] > _CANDIDATE_DOCS:
            break
        chosen.append(lexeme)
        docs += df[lexeme]
    return chosen


def _idf(total: int, df: int) -> float:
    return math.log(1 + (max(total, df) - df + 0.5) / (df + 0.5))


def _bm25(freqs: dict[str, int], idf: dict[str, float], avg_len: float) -> float:
    length = sum(freqs.values()) or 1
    norm = _BM25_K1 * (1 - _BM25_B + _BM25_B * length / avg_len)
    score = 0.0
    for lexeme, weight in idf.items():
        tf = freqs.get(lexeme, 0)
        if tf:
            score += weight * tf * (_BM25_K1 + 1) / (tf + norm)
    return score


def _term_freqs(tsv_text: str) -> dict[str, int]:
    """``'cat':1,4 'sit':2`` → {'cat': 2, 'sit': 1}."""
    return {
        lexeme.replace("''", "'"): positions.count(",") + 1 if positions else 1
        for lexeme, positions in _TSV_TOKEN.findall(tsv_text)
    }


_TSV_TOKEN = re.compile(r"'((?:[^']|'')*)'(?::([0-9A-D,]+))?")


def _quote_lexeme(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form of a query vector."""
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


def _hit(row: Sequence[Any], similarity: float | None = None) -> Hit:
    """A row that starts with ``_COLUMNS``."""
    item_id, kind, role, thread_id, end_user, content, digest, tokens, meta, created = row[:10]
    return Hit(
        context_ids=list(row[10] or ()),
        id=item_id,
        kind=kind,
        role=role,
        thread_id=thread_id,
        end_user=end_user,
        content=content,
        content_hash=digest,
        token_count=tokens,
        metadata=meta or {},
        created_at=created,
        similarity=similarity,
    )
