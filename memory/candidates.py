"""Recall's candidates: every leg's pool, widened, read once, with its features.

    legs       vector (HNSW), lexical (BM25 over own text + neighbour context), entity (keys)
    prelim     weighted RRF of the legs picks the strongest hits
    widen      their neighbours (``context_ids``) and the turns of the best sessions (threads
               scored by their best hits), so an answer next to a hit, or in the session the
               question is about, gets a chance
    hydrate    one statement reads every candidate with its similarity to the query,
               which of the query's lexemes its own text and its context hold, and its keys
    features   per candidate, for ``memory.ranker`` (names in ``ranker.FEATURES``)

The service runs the legs (the lexical one on its own connection while the query is embedded)
and hands their results here; everything here reads through the caller's connection and filters
by the caller's ``Filters`` (workspace, end user, thread) in every statement.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from memory.keys import QueryKeys
from memory.recall import (
    _BM25_B,
    _BM25_K1,
    _COLUMNS,
    RRF_K,
    W_CONTEXT,
    Conn,
    Filters,
    Hit,
    QueryTerms,
    _hit,
    _quote_lexeme,
)

_WHOLE = _COLUMNS.split(", ")[1:]  # all but the id
PRELIM = 10  # the hits whose neighbours join the pool
SESSIONS = 3  # the best sessions whose turns join the pool
SESSION_TURNS = 30  # at most, per session, nearest the query first
_TOP_PER_SESSION = 2
_MAX_LEXEMES = 16  # a session scores by the mean of its best hits


@dataclass
class Candidate:
    hit: Hit
    legs: dict[str, tuple[int, float]] = field(default_factory=dict)  # leg: (rank, score)
    keys: frozenset[str] = frozenset()
    bm25: float = 0.0
    bm25_context: float = 0.0
    coverage: float = 0.0  # share of the query's idf mass in the item's own text
    coverage_context: float = 0.0  # ... in its own text or its neighbours'
    features: dict[str, float] = field(default_factory=dict)


def pool(legs: dict[str, list[Hit]]) -> dict[uuid.UUID, Candidate]:
    """The legs' hits by id, each with its rank and score in every leg that found it."""
    found: dict[uuid.UUID, Candidate] = {}
    for leg, hits in legs.items():
        for rank, hit in enumerate(hits, 1):
            score = {"vector": hit.similarity, "lexical": hit.lexical}.get(leg)
            candidate = found.setdefault(hit.id, Candidate(hit))
            candidate.legs[leg] = (rank, float(score if score is not None else 0.0))
    return found


def prelim(found: dict[uuid.UUID, Candidate]) -> list[Candidate]:
    """Weighted RRF over the legs: what the widening starts from."""
    weight = {"vector": 0.5, "lexical": 1.0, "entity": 0.5}

    def rrf(c: Candidate) -> float:
        return sum(weight.get(leg, 0.5) / (RRF_K + rank) for leg, (rank, _) in c.legs.items())

    return sorted(found.values(), key=rrf, reverse=True)


async def widen(
    conn: Conn,
    filters: Filters,
    found: dict[uuid.UUID, Candidate],
    terms: QueryTerms | None,
    vector: str | None,
) -> None:
    """Add the top hits' neighbours and their best sessions' turns; read every candidate."""
    ranked = prelim(found)
    extra = {i for c in ranked[:PRELIM] for i in c.hit.context_ids if i not in found}
    sessions = _best_sessions(ranked)
    ids = [*found, *sorted(extra)]
    added = await _hydrate(conn, filters, found, ids, terms, vector, threads=sessions)
    for item_id in added:
        found[item_id].legs.setdefault("widened", (1, 1.0))


def _best_sessions(ranked: Sequence[Candidate]) -> list[str]:
    scores: dict[str, list[float]] = defaultdict(list)
    for rank, c in enumerate(ranked[: 4 * PRELIM], 1):
        if c.hit.thread_id is not None and len(scores[c.hit.thread_id]) < _TOP_PER_SESSION:
            scores[c.hit.thread_id].append(1 / (RRF_K + rank))
    best = sorted(scores, key=lambda t: sum(scores[t]), reverse=True)
    return best[:SESSIONS]


async def _hydrate(
    conn: Conn,
    filters: Filters,
    found: dict[uuid.UUID, Candidate],
    ids: list[uuid.UUID],
    terms: QueryTerms | None,
    vector: str | None,
    *,
    threads: Sequence[str] = (),
) -> list[uuid.UUID]:
    """Read these ids (and up to ``SESSION_TURNS`` of each thread's turns) into ``found``."""
    if not ids and not threads:
        return []
    where, params = filters.sql()
    # The presence of the query's rarest lexemes, tested in C (a tsquery match per column):
    # counting term frequencies by unnesting every candidate's tsvectors doubled the cost of
    # this statement (README "Recall latency"), and in a turn a query term rarely occurs twice.
    lexemes = sorted(terms.idf, key=lambda t: -terms.idf[t])[:_MAX_LEXEMES] if terms else []
    params.update(threads=list(threads), ids=ids, m=SESSION_TURNS * len(threads))
    params.update({f"t{i}": _quote_lexeme(t) for i, t in enumerate(lexemes)})
    distance, near = "NULL::float8", "created_at DESC"
    if vector is not None:
        params["q"] = vector
        distance, near = "embedding <=> %(q)s::vector", "distance"  # each vector compared once
    matches = ", ".join(
        f"{col} @@ %(t{i})s::tsquery" for col in ("tsv", "ctx_tsv") for i in range(len(lexemes))
    )
    tf = f"ARRAY[{matches}]::bool[]" if lexemes else "ARRAY[]::bool[]"
    rest = f"keys, {distance} AS distance, length(tsv), length(ctx_tsv), {tf} FROM memory_items "
    rest += f"WHERE {where} AND embedding IS NOT NULL"
    select = f"SELECT {_COLUMNS}, {rest}"
    # The legs read their hits whole already: of those, only what the legs did not read.
    params["new"] = [i for i in ids if i not in found]
    again = [f"CASE WHEN id = ANY(%(new)s::uuid[]) THEN {c} END" for c in _WHOLE]
    statement = f"(SELECT id, {', '.join(again)}, {rest} AND id = ANY(%(ids)s::uuid[]))"
    if threads:
        statement += (
            f" UNION ALL ({select} AND thread_id = ANY(%(threads)s::text[]) "
            f"AND NOT (id = ANY(%(ids)s::uuid[])) ORDER BY {near} LIMIT %(m)s)"
        )
    cursor = await conn.execute(statement, params, binary=True, prepare=False)
    added = []
    mass = (sum(terms.idf.values()) or 1.0) if terms is not None else 1.0
    for row in await cursor.fetchall():
        candidate = found.get(row[0])
        if candidate is None:
            candidate = found[row[0]] = Candidate(_hit(row))
            added.append(row[0])
        candidate.hit.similarity = None if row[12] is None else 1 - float(row[12])
        candidate.keys = frozenset(row[11] or ())
        if terms is not None:
            present = row[15] or []
            own = {t for i, t in enumerate(lexemes) if present[i]}
            around = {t for i, t in enumerate(lexemes) if present[len(lexemes) + i]}
            candidate.bm25 = _bm25(own, int(row[13]), terms, terms.avg_len)
            candidate.bm25_context = _bm25(around, int(row[14]), terms, 2 * terms.avg_len)
            candidate.coverage = sum(terms.idf.get(t, 0.0) for t in own) / mass
            candidate.coverage_context = sum(terms.idf.get(t, 0.0) for t in own | around) / mass
    return added


def _bm25(found: set[str], length: int, terms: QueryTerms, avg_len: float) -> float:
    """BM25 with each found term's frequency taken as 1."""
    norm = _BM25_K1 * (1 - _BM25_B + _BM25_B * max(length, 1) / avg_len)
    return sum(terms.idf[t] for t in found) * (_BM25_K1 + 1) / (1 + norm)


def featurize(found: dict[uuid.UUID, Candidate], qkeys: QueryKeys) -> list[Candidate]:
    """Every candidate's features, each relative to the pool where a raw scale means nothing."""
    cands = list(found.values())
    if not cands:
        return []
    sims = {c.hit.id: c.hit.similarity or 0.0 for c in cands}
    max_sim = max(sims.values())
    max_bm25 = max(max(c.bm25 + W_CONTEXT * c.bm25_context for c in cands), 1e-9)
    lexical = {c.hit.id: (c.bm25 + W_CONTEXT * c.bm25_context) / max_bm25 for c in cands}
    base = {c.hit.id: sims[c.hit.id] + lexical[c.hit.id] for c in cands}
    sessions = _session_scores(cands, base)
    session_rank = {t: r for r, t in enumerate(sorted(sessions, key=sessions.get, reverse=True), 1)}  # type: ignore[arg-type]
    best_session = max(sessions.values(), default=0.0) or 1.0
    newest = sorted(cands, key=lambda c: c.hit.created_at, reverse=True)
    recency = {c.hit.id: 1 - i / max(len(cands) - 1, 1) for i, c in enumerate(newest)}
    by_sim = _pool_ranks(cands, sims)
    by_lexical = _pool_ranks(cands, lexical)
    speakers = {f"speaker:{n}" for n in qkeys.names}
    mentions = {f"name:{n}" for n in qkeys.names}
    for c in cands:
        hid, keys, thread = c.hit.id, c.keys, c.hit.thread_id
        near = [i for i in c.hit.context_ids if i in found]
        named = sum(1 for n in qkeys.names if f"name:{n}" in keys or f"speaker:{n}" in keys)
        c.features = {
            "sim": sims[hid],
            "sim_gap": sims[hid] - max_sim,
            "vector_rr": _rr(c, "vector"),
            "bm25": c.bm25 / max_bm25,
            "bm25_context": c.bm25_context / max_bm25,
            "lexical_rr": _rr(c, "lexical"),
            "sim_pool_rr": 1 / math.sqrt(by_sim[hid]),
            "lexical_pool_rr": 1 / math.sqrt(by_lexical[hid]) if lexical[hid] > 0 else 0.0,
            "coverage": c.coverage,
            "coverage_context": c.coverage_context,
            "entity_rr": _rr(c, "entity"),
            "names": named / len(qkeys.names) if qkeys.names else 0.0,
            "speaker": 1.0 if keys & speakers else 0.0,
            "mentioned": 1.0 if keys & mentions else 0.0,
            "date": len(keys & qkeys.dates) / len(qkeys.dates) if qkeys.dates else 0.0,
            "when_time": 1.0 if qkeys.when and "time" in keys else 0.0,
            "neighbour_sim": max((sims[i] for i in near), default=0.0),
            "neighbour_lexical": max((lexical[i] for i in near), default=0.0),
            "session": sessions.get(thread, 0.0) / best_session if thread else 0.0,
            "session_rr": 1 / session_rank[thread] if thread in session_rank else 0.0,
            "length": min(math.log1p(c.hit.token_count) / math.log(200), 1.5),
            "recency": recency[hid],
            "widened": 1.0 if "widened" in c.legs else 0.0,
        }
    return cands


def _pool_ranks(cands: Sequence[Candidate], value: dict[uuid.UUID, float]) -> dict[uuid.UUID, int]:
    ordered = sorted(cands, key=lambda c: value[c.hit.id], reverse=True)
    return {c.hit.id: rank for rank, c in enumerate(ordered, 1)}


def _rr(c: Candidate, leg: str) -> float:
    return 1 / math.sqrt(c.legs[leg][0]) if leg in c.legs else 0.0


def _session_scores(cands: Sequence[Candidate], base: dict[uuid.UUID, float]) -> dict[str, float]:
    per: dict[str, list[float]] = defaultdict(list)
    for c in cands:
        if c.hit.thread_id is not None:
            per[c.hit.thread_id].append(base[c.hit.id])
    return {
        t: sum(sorted(v, reverse=True)[:_TOP_PER_SESSION]) / _TOP_PER_SESSION
        for t, v in per.items()
    }


__all__ = ["Candidate", "featurize", "pool", "prelim", "widen"]
