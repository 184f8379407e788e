"""Step 5: recall. Hybrid search over one workspace's memory, fused by weighted RRF.

- vector leg: pgvector cosine top-N on the HNSW index, with pgvector 0.8 iterative index
  scans so the workspace (and end-user / thread) filter never starves the result;
- lexical leg: Postgres full text, but not AND-ed: the query's lexemes are OR-ed (a natural
  question rarely shares every word with the fact it asks about), candidates come from the GIN
  index, and they are ranked by BM25 with document frequencies from ``term_stats`` (plain
  ``ts_rank`` ignores how rare a word is); very common lexemes are dropped from the query.
- fusion: ``w_lex/(k+rank_lex) + w_vec/(k+rank_vec)``; recency breaks ties. A hit found only by
  the vector leg must clear a similarity floor, so unrelated memory is not injected.
Every statement filters on ``workspace_id``.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Tuned on `make eval` (106 settings swept; README "Recall quality"): a small RRF_K lets a
# leg's top hits dominate; the vector leg weighs more because conversations paraphrase.
RRF_K = 10
W_LEXICAL = 1.0
W_VECTOR = 1.5
_BM25_K1 = 1.2
_BM25_B = 0.75
_MAX_QUERY_LEXEMES = 16
_COMMON_FRACTION = 0.02  # lexemes in more than 2% of the documents add noise, not signal


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
    """Documents per workspace, cached briefly (BM25's N and average length)."""

    def __init__(self, ttl: float = 30.0) -> None:
        self._ttl = ttl
        self._cache: dict[str, tuple[float, int, float]] = {}

    async def get(self, session: AsyncSession, workspace_id: str) -> tuple[int, float]:
        hit = self._cache.get(workspace_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
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
        self._cache[workspace_id] = (now + self._ttl, n, avg)
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
    hits: dict[uuid.UUID, Hit] = {}
    fused: dict[uuid.UUID, float] = {}
    if "vector" in legs and vector is not None:
        for rank, hit in enumerate(await vector_leg(session, filters, vector, candidates)):
            hits[hit.id] = hit
            fused[hit.id] = fused.get(hit.id, 0.0) + W_VECTOR / (RRF_K + rank + 1)
    if "lexical" in legs and query.strip():
        for rank, hit in enumerate(await lexical_leg(session, filters, query, candidates, counts)):
            known = hits.setdefault(hit.id, hit)
            known.lexical = hit.lexical
            fused[hit.id] = fused.get(hit.id, 0.0) + W_LEXICAL / (RRF_K + rank + 1)
    ranked = []
    for item_id, score in fused.items():
        hit = hits[item_id]
        if hit.content_hash in exclude_hashes:
            continue
        if hit.lexical is None and len(legs) > 1 and (hit.similarity or 0.0) < min_similarity:
            continue
        hit.score = score
        ranked.append(hit)
    ranked.sort(key=lambda h: (h.score, h.created_at), reverse=True)
    return ranked[:limit]


async def vector_leg(
    session: AsyncSession, filters: Filters, vector: str | Sequence[float], n: int
) -> list[Hit]:
    where, params = filters.sql()
    await session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    await session.execute(text(f"SET LOCAL hnsw.ef_search = {max(40, min(n * 2, 400))}"))
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


async def lexical_leg(
    session: AsyncSession, filters: Filters, query: str, n: int, counts: DocCounts
) -> list[Hit]:
    where, params = filters.sql()
    stats = await session.execute(
        text(
            "SELECT q.lexeme, coalesce(t.df, 0) AS df "
            "FROM unnest(tsvector_to_array(to_tsvector('english', :query))) AS q(lexeme) "
            "LEFT JOIN term_stats t ON t.workspace_id = :ws AND t.lexeme = q.lexeme"
        ),
        {"query": query[:2000], "ws": params["ws"]},
    )
    total, avg_len = await counts.get(session, filters.workspace_id)
    idf = {row.lexeme: _idf(total, int(row.df)) for row in stats}
    useful = [
        lex for lex, _ in sorted(idf.items(), key=lambda kv: kv[1], reverse=True)
        if total < 20 or _df_fraction(total, idf[lex]) <= _COMMON_FRACTION
    ][:_MAX_QUERY_LEXEMES]  # fmt: skip
    if not useful:
        return []
    params.update(tsq=" | ".join(_quote_lexeme(lex) for lex in useful), n=max(n * 4, 100))
    rows = await session.execute(
        text(
            f"SELECT {_COLUMNS}, tsv::text AS tsv_text FROM memory_items "
            f"WHERE {where} AND tsv @@ CAST(:tsq AS tsquery) "
            "ORDER BY ts_rank_cd(tsv, CAST(:tsq AS tsquery)) DESC, created_at DESC LIMIT :n"
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


def _idf(total: int, df: int) -> float:
    return math.log(1 + (max(total, df) - df + 0.5) / (df + 0.5))


def _df_fraction(total: int, idf: float) -> float:
    # invert _idf: df = (N + 1) / (e^idf) - 0.5, approximately, as a fraction of N
    df = (total + 1) / math.exp(idf) - 0.5
    return max(0.0, df) / max(total, 1)


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
