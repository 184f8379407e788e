"""Step 5: recall. Hybrid search over one workspace's memory, fused by weighted RRF.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

# Tuned on `make eval` (README "Recall quality"): with lexemes in more than 2% of the documents
# left out, the lexical leg is precise, and at 20 candidates per leg these lose nothing against
# 50 (the earlier W_VECTOR 1.5 / RRF_K 10 lost 0.025 R@5 there); the result is flat across RRF_K.
RRF_K = 5
W_LEXICAL = 1.0
W_VECTOR = 0.5
_BM25_K1 = 1.2
_BM25_B = 0.75
_MAX_QUERY_LEXEMES = 16
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
        }


@dataclass(frozen=True)
class Filters:
    workspace_id: str
    end_user: str | None = None
    thread_id: str | None = None

    def sql(self) -> tuple[str, dict[str, Any]]:
        clauses = ["workspace_id = :ws", "superseded_by IS NULL"]
        params: dict[str, Any] = {"ws": uuid.UUID(self.workspace_id)}
        if self.end_user is not None:
            clauses.append("end_user = :end_user")
            params["end_user"] = self.end_user
        if self.thread_id is not None:
            clauses.append("thread_id = :thread_id")
            params["thread_id"] = self.thread_id
        return " AND ".join(clauses), params


_COLUMNS = (
    "id, kind, role, thread_id, end_user, content, content_hash, token_count, metadata, created_at"
)


class DocCounts:
    """Documents per workspace and their average length (BM25's N and avgdl), cached.

    Counting takes ~150 ms at 100k items and the figures move slowly, so with ``sessions`` an
    expired entry is still served while one background refresh replaces it.
    """

    def __init__(
        self, ttl: float = 30.0, sessions: async_sessionmaker[AsyncSession] | None = None
    ) -> None:
        self._ttl = ttl
        self._sessions = sessions
        self._cache: dict[str, tuple[float, int, float]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    async def get(self, session: AsyncSession, workspace_id: str) -> tuple[int, float]:
        hit = self._cache.get(workspace_id)
        if hit is None or (hit[0] <= time.monotonic() and self._sessions is None):
            return await self._count(session, workspace_id)
        if hit[0] <= time.monotonic() and workspace_id not in self._refreshing:
            task = asyncio.create_task(self._refresh(workspace_id))
            self._refreshing[workspace_id] = task
            task.add_done_callback(lambda _: self._refreshing.pop(workspace_id, None))
        return hit[1], hit[2]

    async def _refresh(self, workspace_id: str) -> None:
        assert self._sessions is not None
        with contextlib.suppress(Exception):  # keep serving the old figures
            async with self._sessions() as session:
                await self._count(session, workspace_id)
                await session.rollback()

    async def _count(self, session: AsyncSession, workspace_id: str) -> tuple[int, float]:
        row = (
            await session.execute(
                text(
                    "SELECT count(*), coalesce(avg(length(tsv)), 1) FROM memory_items "
                    "WHERE workspace_id = :ws AND embedding IS NOT NULL"
                ),
                {"ws": uuid.UUID(workspace_id)},
            )
        ).one()
        n, avg = int(row[0]), float(row[1]) or 1.0
        self._cache[workspace_id] = (time.monotonic() + self._ttl, n, avg)
        return n, avg


async def search(
    session: AsyncSession,
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
    """Both legs one after the other on one session, fused (``Memory`` overlaps them)."""
    by_vector = by_text = None
    if "vector" in legs and vector is not None:
        by_vector = await vector_leg(session, filters, vector, candidates)
    if "lexical" in legs and query.strip():
        by_text = await lexical_leg(session, filters, query, candidates, counts)
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
    session: AsyncSession,
    filters: Filters,
    vector: str | Sequence[float],
    n: int,
    *,
    tuned: bool = False,
) -> list[Hit]:
    """The ``n`` nearest items; ``tuned``: ``tune_vector_scan`` already ran in this transaction."""
    if not tuned:
        await tune_vector_scan(session, n)
    where, params = filters.sql()
    literal = vector if isinstance(vector, str) else vector_literal(vector)
    params.update(q=literal, n=n)
    rows = await session.execute(
        text(
            f"SELECT {_COLUMNS}, 1 - (embedding <=> CAST(:q AS vector)) AS similarity "
            f"FROM memory_items WHERE {where} AND embedding IS NOT NULL "
            "ORDER BY embedding <=> CAST(:q AS vector) LIMIT :n"
        ),
        params,
    )
    hits = [_hit(row, similarity=float(row.similarity)) for row in rows]
    hits.sort(key=lambda h: h.similarity or 0.0, reverse=True)  # relaxed order: re-sort
    return hits


async def tune_vector_scan(session: AsyncSession, n: int) -> None:
    """The HNSW scan settings of ``vector_leg``, for the transaction (one round trip, which
    ``Memory`` spends while the query is still being embedded)."""
    await session.execute(
        text(
            "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
            "set_config('hnsw.ef_search', :ef, true)"
        ),
        {"ef": str(max(40, min(n * 2, 400)))},
    )


@dataclass(frozen=True)
class QueryTerms:
    """A query's lexemes with their document frequency and BM25 idf in one workspace."""

    df: dict[str, int]
    idf: dict[str, float]
    useful: list[str]  # rarest first; very common lexemes dropped
    total: int
    avg_len: float


async def query_terms(
    session: AsyncSession, filters: Filters, query: str, counts: DocCounts
) -> QueryTerms:
    stats = await session.execute(
        text(
            "SELECT q.lexeme, coalesce(t.df, 0) AS df "
            "FROM unnest(tsvector_to_array(to_tsvector('english', :query))) AS q(lexeme) "
            "LEFT JOIN term_stats t ON t.workspace_id = :ws AND t.lexeme = q.lexeme"
        ),
        {"query": query[:2000], "ws": uuid.UUID(filters.workspace_id)},
    )
    total, avg_len = await counts.get(session, filters.workspace_id)
    df = {row.lexeme: int(row.df) for row in stats}
    idf = {lexeme: _idf(total, count) for lexeme, count in df.items()}
    useful = sorted(
        (lex for lex, count in df.items() if total < 20 or count <= _COMMON_FRACTION * total),
        key=lambda lex: (df[lex], lex),
    )[:_MAX_QUERY_LEXEMES]
    return QueryTerms(df, idf, useful, total, avg_len)


async def lexical_leg(
    session: AsyncSession, filters: Filters, query: str, n: int, counts: DocCounts
) -> list[Hit]:
    where, params = filters.sql()
    terms = await query_terms(session, filters, query, counts)
    df, idf, useful, avg_len = terms.df, terms.idf, terms.useful, terms.avg_len
    if not useful:
        return []
    scored = " + ".join(f"(tsv @@ :lex{i})::int * :idf{i}" for i in range(len(useful)))
    for i, lexeme in enumerate(useful):
        params[f"lex{i}"], params[f"idf{i}"] = _quote_lexeme(lexeme), idf[lexeme]
    # Scoped to an end user or thread, the planner reads that scope's rows instead: no cap.
    scoped = filters.end_user is not None or filters.thread_id is not None
    candidates = useful if scoped else _rarest(useful, df)
    params.update(
        tsq=" | ".join(_quote_lexeme(lex) for lex in candidates), avg=avg_len, n=max(2 * n, 40)
    )
    # BM25 with every term frequency taken as 1 ranks the candidates in SQL; only the top
    # ones come back, with their tsvector as text for the exact BM25 below.
    rows = await session.execute(
        text(
            f"SELECT {_COLUMNS}, tsv::text AS tsv_text FROM ("
            f"SELECT {_COLUMNS}, tsv, ({scored}) / "
            f"(1 + {_BM25_K1} * (1 - {_BM25_B} + {_BM25_B} * length(tsv) / :avg))"
            " AS approx "
            f"FROM memory_items WHERE {where} AND tsv @@ :tsq "
            "ORDER BY approx DESC, created_at DESC LIMIT :n) AS top"
        ),
        params,
    )
    hits = []
    for row in rows:
        hit = _hit(row)
        hit.lexical = _bm25(_term_freqs(row.tsv_text), idf, avg_len)
        hits.append(hit)
    hits.sort(key=lambda h: (h.lexical or 0.0, h.created_at), reverse=True)
    return hits[:n]


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


def _hit(row: Any, similarity: float | None = None) -> Hit:
    return Hit(
        id=row.id,
        kind=row.kind,
        role=row.role,
        thread_id=row.thread_id,
        end_user=row.end_user,
        content=row.content,
        content_hash=row.content_hash,
        token_count=row.token_count,
        metadata=row.metadata or {},
        created_at=row.created_at,
        similarity=similarity,
    )
