"""Vectors for memory items: embed what is still unembedded, and clear vectors to re-embed.

The gateway inserts items with ``embedding = NULL``; ``embed`` fills them. It reads without
locks, embeds outside any transaction (a remote embedder may take seconds), then writes with
``UPDATE ... WHERE embedding IS NULL RETURNING id``: when two runs race, or the item was
deleted meanwhile, only rows this run actually wrote come back, and only those have their
lexemes counted in ``term_stats``. Invariant: an item is counted iff its embedding is not null.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from memory import neighbours
from memory.embedder import Embedder, Vectors, document_text
from memory.keys import item_keys
from memory.neighbours import INDEX_VERSION
from memory.outbox import EMBED, record

BATCH = 32  # texts per embed call and per write transaction: a crash loses at most one batch
REEMBED_JOB_SIZE = 256  # item ids per embed_items job when re-embedding

_UNEMBEDDED = text(
    "SELECT id, workspace_id, role, kind, content, context, created_at FROM memory_items "
    "WHERE id = ANY(CAST(:ids AS uuid[])) AND embedding IS NULL"
)
_WORKSPACES = text(
    "SELECT workspace_id, array_agg(id) AS ids FROM memory_items "
    "WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY 1"
)
# Writers of one workspace's rows take turns: the context refresh rewrites neighbours of the
# items (rows another run may be writing), so two runs over overlapping items could otherwise
# lock the same rows in opposite orders and deadlock. Locks are taken in workspace-id order.
_LOCK_WORKSPACES = text(
    "SELECT pg_advisory_xact_lock(hashtextextended('cmg-embed:' || w::text, 0)) FROM "
    "(SELECT DISTINCT workspace_id AS w FROM memory_items "
    "WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY 1) AS s"
)
# The vector, the keys (JSON arrays: one text[] per row cannot go through unnest) and the
# index version, at once.
_WRITE = text(
    """
    UPDATE memory_items AS m
    SET embedding = CAST(v.embedding AS vector), embedding_model = :model,
        keys = ARRAY(SELECT jsonb_array_elements_text(v.keys)), index_version = :version
    FROM unnest(CAST(:ids AS uuid[]), CAST(:vectors AS text[]), CAST(:keys AS jsonb[]))
        AS v(id, embedding, keys)
    WHERE m.id = v.id AND m.embedding IS NULL
    RETURNING m.id
    """
)
# Ordered, so concurrent upserts of shared lexemes lock rows in the same order.
COUNT_TERMS = text(
    """
    INSERT INTO term_stats (workspace_id, lexeme, df)
    SELECT workspace_id, lexeme, count(*)
    FROM memory_items, unnest(tsvector_to_array(tsv)) AS lexeme
    WHERE id = ANY(CAST(:ids AS uuid[]))
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (workspace_id, lexeme) DO UPDATE SET df = term_stats.df + EXCLUDED.df
    """
)
# The reverse of _WRITE + COUNT_TERMS, for re-embedding: vectors cleared, lexemes un-counted.
_CLEAR = text(
    """
    WITH cleared AS (
        UPDATE memory_items SET embedding = NULL, embedding_model = NULL
        WHERE id = ANY(CAST(:ids AS uuid[])) AND embedding IS NOT NULL
        RETURNING id, workspace_id, tsv
    ), lexemes AS (
        SELECT workspace_id, lexeme, count(*) AS n
        FROM cleared, unnest(tsvector_to_array(tsv)) AS lexeme
        GROUP BY 1, 2
    ), decremented AS (
        UPDATE term_stats AS t SET df = t.df - l.n
        FROM lexemes AS l
        WHERE t.workspace_id = l.workspace_id AND t.lexeme = l.lexeme
        RETURNING 1
    )
    SELECT id FROM cleared
    """
)


def embed(engine: Engine, embedder: Embedder, ids: Sequence[uuid.UUID]) -> int:
    """Embed those of ``ids`` that exist and have no vector; returns how many this call wrote."""
    written = 0
    for start in range(0, len(ids), BATCH):
        written += _embed_batch(engine, embedder, ids[start : start + BATCH])
    return written


def _embed_batch(engine: Engine, embedder: Embedder, ids: Sequence[uuid.UUID]) -> int:
    with Session(engine) as session, session.begin():
        session.execute(_LOCK_WORKSPACES, {"ids": list(ids)})
        index_context(session, ids)
    with engine.connect() as conn:
        rows = conn.execute(_UNEMBEDDED, {"ids": list(ids)}).all()
    if not rows:
        return 0
    vectors = embedder.embed([indexed_text(r) for r in rows])
    with Session(engine) as session, session.begin():
        session.execute(_LOCK_WORKSPACES, {"ids": [r.id for r in rows]})
        params = {
            "ids": [r.id for r in rows],
            "vectors": as_text(vectors),
            "keys": [orjson.dumps(item_keys(r.content, r.created_at)).decode() for r in rows],
            "model": embedder.name,
            "version": INDEX_VERSION,
        }
        written = list(session.execute(_WRITE, params).scalars())
        if written:
            session.execute(COUNT_TERMS, {"ids": written})
    return len(written)


def index_context(session: Session, ids: Sequence[uuid.UUID]) -> int:
    """Context of these items and of their neighbours (``memory.neighbours``), per workspace."""
    groups = session.execute(_WORKSPACES, {"ids": list(ids)}).all()
    return sum(neighbours.refresh(session, g.workspace_id, g.ids) for g in groups)


def indexed_text(row: Any) -> str:
    """What the vector is made of: speaker and date first, then the item's own text."""
    # Measured (bench/recall_dev.py): with the neighbours' text in the vector too, the synthetic
    # set loses 0.04-0.06 R@10 and LoCoMo gains at most 0.015; the context is full text only.
    return document_text(row.role, row.kind, row.content, row.created_at)


def as_text(vectors: Vectors) -> list[str]:
    """pgvector's text form; 8 significant digits round-trip a float32."""
    return ["[" + ",".join(f"{x:.8g}" for x in row) + "]" for row in np.asarray(vectors).tolist()]


def reembed(
    session: Session, model: str, *, workspace_id: uuid.UUID | None = None, everything: bool = False
) -> int:
    """Clear vectors made by another model (or all, with ``everything``) and queue their jobs.

    One transaction: vectors cleared, lexemes un-counted, ``embed_items`` outbox rows recorded;
    the caller commits and pushes the outbox. Returns how many items will be re-embedded.
    """
    where = ["embedding IS NOT NULL"]
    params: dict[str, Any] = {"model": model}
    if workspace_id is not None:
        where.append("workspace_id = :workspace_id")
        params["workspace_id"] = workspace_id
    if not everything:
        where.append("embedding_model IS DISTINCT FROM :model")
    query = text(f"SELECT id FROM memory_items WHERE {' AND '.join(where)} ORDER BY id")
    ids = list(session.execute(query, params).scalars())
    cleared: list[uuid.UUID] = []
    for start in range(0, len(ids), REEMBED_JOB_SIZE):
        chunk = list(
            session.execute(_CLEAR, {"ids": ids[start : start + REEMBED_JOB_SIZE]}).scalars()
        )
        if chunk:
            record(session, EMBED, "embed_items", item_ids=[str(i) for i in chunk])
            cleared.extend(chunk)
    return len(cleared)


_STALE = text(
    "SELECT id, workspace_id, content, created_at FROM memory_items "
    "WHERE id > :after AND embedding IS NOT NULL "
    "AND index_version IS DISTINCT FROM :version AND (CAST(:ws AS uuid) IS NULL "
    "OR workspace_id = CAST(:ws AS uuid)) ORDER BY id LIMIT :limit"
)
_KEYS = text(
    """
    UPDATE memory_items AS m
    SET keys = ARRAY(SELECT jsonb_array_elements_text(v.keys)), index_version = :version
    FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS jsonb[])) AS v(id, keys)
    WHERE m.id = v.id
    """
)


def reindex(
    engine: Engine, *, workspace_id: uuid.UUID | None = None, batch: int = REEMBED_JOB_SIZE
) -> int:
    """Give embedded items the current index (context, keys) in small transactions.

    Online: each batch is one short transaction, so search and capture go on meanwhile.
    Idempotent and resumable: a row records its ``index_version``; a second run, or one after
    an interruption, only finds the rows still lacking it. Returns how many rows it indexed.
    """
    done, after = 0, uuid.UUID(int=0)
    while True:
        with Session(engine) as session, session.begin():
            params = {"after": after, "version": INDEX_VERSION, "limit": batch}
            rows = session.execute(_STALE, {**params, "ws": workspace_id}).all()
            if not rows:
                return done
            index_context(session, [r.id for r in rows])
            keys = [orjson.dumps(item_keys(r.content, r.created_at)).decode() for r in rows]
            session.execute(
                _KEYS, {"ids": [r.id for r in rows], "keys": keys, "version": INDEX_VERSION}
            )
        done += len(rows)
        after = rows[-1].id
