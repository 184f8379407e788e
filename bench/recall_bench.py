"""Recall latency at 10k and 100k items in one workspace, with 10 other workspaces of 10k present.

    python -m bench.recall_bench                            # up to 300 queries per series
    python -m bench.recall_bench --keep-dir /tmp/cmg-recall # load once, then reuse: minutes
    python -m bench.recall_bench --queries 100 --no-http

One table holds 10 workspaces of 10k, one of 10k and one of 100k (210k rows), loaded by COPY
(``bench/synthetic_items.py``: realistic text; vectors the real MiniLM vector of the item's turn
plus noise, or with ``--vectors random`` random unit vectors) with the vector and text indexes
dropped, then indexed once; a further sample goes into the indexed table to time that way of
loading too. The 10k workspace is measured with the 100k one present (4.8% of the HNSW graph
instead of 9%: slightly harsher than 10 x 10k alone). Each query is timed in-process, one step at
a time: the query embedding alone (local MiniLM, one thread), the vector leg, the lexical leg, the
full hybrid ``Memory.search`` as the gateway runs it (embedding included; the lexical leg runs
while the query is embedded), the same with the query vector cached, end-user scoped, then
``GET /v1/memory/search`` of a running gateway. A series stops after ``--series-seconds``. The
lexical leg ranks only some candidates (``memory/recall.py``); how often it still returns what
BM25 over every matching item would is measured too. EXPLAIN ANALYZE of both legs shows which
indexes serve them. Loopback only; everything started here is stopped, the temp dir deleted
(``--keep-dir``: kept). Results: ``bench-results/recall-bench.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench import synthetic_items
from bench.memory_stack import Api, memory_stack
from bench.processes import wait_quiet
from bench.recall_explain import explain_legs
from core.settings import Settings
from memory import recall
from memory.ranker import Ranker
from memory.service import Knobs, Memory

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 30.0  # issue #11: p95 at 100k items, embedding included
Timed = Callable[..., Awaitable[Any]]  # timed(call, *args): await call(*args), timed


@dataclass
class Stage:
    size: int
    workspace: str
    queries: list[str]
    timings: dict[str, list[float]] = field(default_factory=dict)
    busy: float = 0.0
    plans: list[str] = field(default_factory=list)
    counts_ms: float = 0.0
    http_retries: int = 0
    agreement: tuple[float, float, int] = (float("nan"), float("nan"), 0)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    notes: list[str] = []
    started = time.monotonic()
    with memory_stack(args.results_dir / "recall-bench-logs", keep=args.keep_dir) as stack:
        texts = synthetic_items.Texts(seed=7)
        queries = texts.queries(2 * (args.queries + args.warmup))
        half = len(queries) // 2
        loaded = _loaded(args.keep_dir)
        if loaded is None:
            small, key_small = stack.tenant("bench-10k")
            large, key_large = stack.tenant("bench-100k")
            others = [stack.tenant(f"bench-other-{i}")[0] for i in range(args.others)]
        else:
            small, large = loaded["small"], loaded["large"]
            key_small, key_large = _new_key(stack, "bench-10k"), _new_key(stack, "bench-100k")
            notes += [f"data loaded {loaded['at']}, reused (`--keep-dir`)", *loaded["notes"]]
        stages = [
            Stage(args.small, small, queries[:half]),
            Stage(args.large, large, queries[half:]),
        ]
        if loaded is None:
            with psycopg.connect(stack.database_url) as conn:
                _load(conn, stages, others, texts, args, notes)
            if args.keep_dir:
                _remember_load(args.keep_dir, small, large, notes)
        with psycopg.connect(stack.database_url) as conn:
            notes.append(_prewarm(conn))
        if args.http:
            stack.start_gateway()
        for stage, key in zip(stages, (key_small, key_large), strict=True):
            print(f"== {stage.size:,} items: {len(stage.queries)} queries", flush=True)
            stage.busy = wait_quiet(0.5, 30)
            asyncio.run(_in_process(stack.database_url, stage, args))
            if args.http:
                _over_http(stack.gateway_url, key, stage, args)
            print(_rows(stage), flush=True)
        notes.append(f"total {time.monotonic() - started:.0f} s")
    report = render(stages, notes, args)
    out = args.results_dir / "recall-bench.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print("\n" + report, flush=True)


# --- loading ---

_LOADED = "recall-bench.json"


def _loaded(keep_dir: Path | None) -> dict[str, Any] | None:
    """What an earlier run loaded into ``--keep-dir`` (None: nothing yet)."""
    marker = keep_dir / _LOADED if keep_dir else None
    if marker is None or not marker.exists():
        return None
    loaded: dict[str, Any] = json.loads(marker.read_text())
    return loaded


def _remember_load(keep_dir: Path, small: str, large: str, notes: list[str]) -> None:
    at = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    marker = {"small": small, "large": large, "at": at, "notes": notes}
    (keep_dir / _LOADED).write_text(json.dumps(marker, indent=1))


def _new_key(stack: Any, workspace: str) -> str:
    from gateway.services import workspaces
    from memory.db import run_transaction

    async def work(session: Any) -> str:
        secret, _ = await workspaces.create_key(session, workspace)
        return secret

    key: str = run_transaction(stack.database_url, work)
    return key


def _load(
    conn: psycopg.Connection, stages: list[Stage], others: list[str],
    texts: synthetic_items.Texts, args: argparse.Namespace, notes: list[str],
) -> None:  # fmt: skip
    """Everything but a sample without the indexes, the indexes, then the sample with them."""
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'memory_items' "
        "AND indexdef ~ 'USING (hnsw|gin)' ORDER BY indexname"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.commit()
    sample = min(args.indexed_sample, stages[-1].size)
    plan = [(w, args.other_size) for w in others] + [(s.workspace, s.size) for s in stages]
    plan[-1] = (plan[-1][0], plan[-1][1] - sample)
    semantic, model = None, "synthetic-normal-384"
    if args.vectors == "turns":
        from memory.embedder import LocalMiniLM

        t0 = time.perf_counter()
        semantic = synthetic_items.turn_vectors(texts, LocalMiniLM(threads=2).embed)
        model = "minilm-turn-plus-noise"
        took = time.perf_counter() - t0
        notes.append(f"{len(semantic):,} distinct turns embedded (real MiniLM) in {took:.0f} s")
    seconds = sum(
        synthetic_items.load(
            conn, w, n, texts, users=args.users, seed=i, model=model, semantic=semantic
        )
        for i, (w, n) in enumerate(plan)
    )
    rows = sum(n for _, n in plan)
    notes.append(f"COPY of {rows:,} rows without the vector and text indexes: {seconds:.1f} s")
    t0 = time.perf_counter()
    synthetic_items.index_context(conn)
    notes.append(
        f"context and keys of {rows:,} rows (what the embed job writes), in bulk: "
        f"{time.perf_counter() - t0:.1f} s"
    )
    conn.execute("SET maintenance_work_mem = '1GB'")
    for name, ddl in indexes:
        t0 = time.perf_counter()
        conn.execute(ddl)
        conn.commit()
        notes.append(f"`{name}` built over {rows:,} rows in {time.perf_counter() - t0:.1f} s")
    if sample:
        seconds = synthetic_items.load(
            conn, stages[-1].workspace, sample, texts, users=args.users, seed=len(plan),
            model=model, semantic=semantic,
        )  # fmt: skip
        notes.append(
            f"COPY of {sample:,} more rows into the indexed table: {seconds:.1f} s "
            f"({sample / seconds:,.0f} rows/s, HNSW + GIN maintained on insert)"
        )
    t0 = time.perf_counter()
    ids = [uuid.UUID(w) for w in [*others, *(s.workspace for s in stages)]]
    conn.execute(synthetic_items.TERM_STATS, (ids,))
    conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    notes.append(f"term_stats (one INSERT ... SELECT) + ANALYZE: {time.perf_counter() - t0:.1f} s")
    settings = conn.execute(
        "SELECT current_setting('shared_buffers'), "
        "pg_size_pretty(pg_relation_size('memory_items_embedding')), "
        "pg_size_pretty(pg_total_relation_size('memory_items'))"
    ).fetchone()
    conn.commit()
    if settings:
        notes.append(
            f"shared_buffers {settings[0]}; HNSW index {settings[1]}; table with indexes and "
            f"TOAST {settings[2]}"
        )


def _prewarm(conn: psycopg.Connection) -> str:
    """The table and its indexes into shared_buffers, as on a server that has been serving."""
    t0 = time.perf_counter()
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    relations = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = 'memory_items'::regclass "
        "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'memory_items'::regclass) "
        "OR c.oid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'memory_items'::regclass)"
    ).fetchall()
    pages = sum(_one(conn.execute("SELECT pg_prewarm(%s)", (r[0],)).fetchone()) for r in relations)
    conn.commit()
    return (
        f"`memory_items`, its TOAST and indexes prewarmed into shared_buffers ({pages:,} pages, "
        f"{time.perf_counter() - t0:.1f} s), as on a server that has been serving"
    )


def _one(row: tuple[Any, ...] | None) -> int:
    assert row is not None  # an aggregate always returns its row
    return int(row[0])


# --- measuring ---


async def _in_process(database_url: str, stage: Stage, args: argparse.Namespace) -> None:
    from memory.db import ReadPool
    from memory.embedder import LocalMiniLM

    reads = ReadPool(database_url, pool_size=4)
    embedder = LocalMiniLM(threads=1)
    # As the gateway's lifespan does: what is loaded by now lives as long as the process, out
    # of the collector's sight; else a full collection stalls a search for ~60 ms now and then.
    gc.collect()
    gc.freeze()
    everyone = recall.Filters(stage.workspace)
    depth = args.candidates
    try:
        async with reads.connection() as conn:
            t0 = time.perf_counter()
            await recall.DocCounts().get(conn, stage.workspace)
            stage.counts_ms = (time.perf_counter() - t0) * 1000
        vectors: dict[str, str] = {}
        async for q, timed in _series(stage, "embed only", args):
            vectors[q] = recall.vector_literal((await timed(_embed, embedder, q))[0])
        counts = recall.DocCounts(pool=reads)

        async def leg(run: Callable[..., Awaitable[Any]], *args: Any) -> Any:
            async with reads.connection() as conn:
                return await run(conn, *args)

        async for q, timed in _series(stage, f"vector leg (candidates {depth})", args):
            if q in vectors:
                await timed(leg, recall.vector_leg, everyone, vectors[q], depth)
        async for q, timed in _series(stage, "lexical leg", args):
            await timed(leg, recall.lexical_leg, everyone, q, depth, counts)
        knobs = Knobs(max_tokens=1000, max_items=8, min_similarity=0.35, candidates=depth,
                      summary_threshold=2000, ranker=Ranker.load())  # fmt: skip
        memory = Memory(None, reads, embedder, knobs)  # type: ignore[arg-type]  # reads only
        async for q, timed in _series(stage, HYBRID, args):
            await timed(memory.search, everyone, q, 10)
        async for q, timed in _series(stage, "hybrid, query vector cached (embed excluded)", args):
            await timed(memory.search, everyone, q, 10)
        memory = Memory(None, reads, embedder, knobs)  # type: ignore[arg-type]  # a fresh cache
        one_user = recall.Filters(stage.workspace, "user-0007")
        async for q, timed in _series(stage, "hybrid, end-user scoped (embed included)", args):
            await timed(memory.search, one_user, q, 10)
        stage.agreement = await _agreement(reads, everyone, stage.queries[:100], depth)
        last = stage.queries[-1]
        stage.plans = await explain_legs(
            reads, everyone, last, recall_vector(vectors, last), depth=depth
        )
    finally:
        await reads.close()


HYBRID = "hybrid Memory.search (embed included)"


def recall_vector(vectors: dict[str, str], query: str) -> list[float]:
    return [float(x) for x in vectors[query].strip("[]").split(",")]


async def _agreement(
    reads: Any, filters: recall.Filters, queries: Sequence[str], depth: int
) -> tuple[float, float, int]:
    """How much of exhaustive BM25's top ``depth`` (and top 10) the lexical leg returns.

    Exhaustive: every item matching any of the query's useful lexemes, scored in Python.
    """
    overlap, top10, asked = [], [], 0
    counts = recall.DocCounts(ttl=3600)
    for q in queries:
        async with reads.connection() as conn:
            got = [h.id for h in await recall.lexical_leg(conn, filters, q, depth, counts)]
            best = await _exhaustive_bm25(conn, filters, q, depth, counts)
        if best:
            asked += 1
            overlap.append(len(set(got) & set(best)) / len(best))
            top10.append(len(set(got[:10]) & set(best[:10])) / len(best[:10]))
    return float(np.mean(overlap)), float(np.mean(top10)), asked


async def _exhaustive_bm25(
    conn: Any, filters: recall.Filters, query: str, n: int, counts: recall.DocCounts
) -> list[uuid.UUID]:
    where, params = filters.sql()
    terms = await recall.query_terms(conn, filters, query, counts)
    idf, useful, avg_len = terms.idf, terms.useful, terms.avg_len
    if not useful:
        return []
    params["tsq"] = " | ".join(recall._quote_lexeme(lex) for lex in useful)
    cursor = await conn.execute(
        f"SELECT id, created_at, tsv::text AS tsv_text FROM memory_items "
        f"WHERE {where} AND tsv @@ %(tsq)s::tsquery",
        params,
    )
    scored = [
        (recall._bm25(recall._term_freqs(tsv_text), idf, avg_len), created_at, item_id)
        for item_id, created_at, tsv_text in await cursor.fetchall()
    ]
    scored.sort(reverse=True)
    return [item_id for _, _, item_id in scored[:n]]


async def _series(
    stage: Stage, label: str, args: argparse.Namespace
) -> AsyncIterator[tuple[str, Timed]]:
    """(query, timer) pairs: warm-up first, then until the queries or ``--series-seconds`` end."""
    samples = stage.timings.setdefault(label, [])
    stage.busy = max(stage.busy, await asyncio.to_thread(wait_quiet, 0.5, 30))
    deadline = time.monotonic() + args.series_seconds
    for n, q in enumerate(stage.queries):
        if time.monotonic() > deadline:
            return

        async def timed(call: Callable[..., Awaitable[Any]], *call_args: Any, n: int = n) -> Any:
            t0 = time.perf_counter()
            result = await call(*call_args)
            if n >= args.warmup:
                samples.append((time.perf_counter() - t0) * 1000)
            return result

        yield q, timed


async def _embed(embedder: Any, q: str) -> Any:
    return await asyncio.to_thread(embedder.embed, [q])


def _over_http(url: str, key: str, stage: Stage, args: argparse.Namespace) -> None:
    api = Api(url, key)
    samples = stage.timings.setdefault("gateway HTTP hybrid (embed included)", [])
    stage.busy = max(stage.busy, wait_quiet(0.5, 30))
    deadline = time.monotonic() + args.series_seconds
    try:
        for n, q in enumerate(stage.queries):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            api.search(q, k=10, mode="hybrid")
            if n >= args.warmup:
                samples.append((time.perf_counter() - t0) * 1000)
    finally:
        stage.http_retries = api.retries
        api.close()


# --- report ---


def _rows(stage: Stage) -> str:
    lines = []
    for label, samples in stage.timings.items():
        if samples:
            p50, p95, p99 = np.percentile(samples, [50, 95, 99])
            lines.append(
                f"| {stage.size:,} | {label} | {len(samples)} | {p50:.2f} | {p95:.2f} | "
                f"{p99:.2f} | {np.mean(samples):.2f} |"
            )
    return "\n".join(lines)


def render(stages: Sequence[Stage], notes: Sequence[str], args: argparse.Namespace) -> str:
    vectors = {
        "turns": "**the real MiniLM vector of the item's turn (4.8k distinct turns) plus random "
        "noise** (cosine ~0.89 to it), so neighbourhoods look like real embeddings'",
        "random": "**random unit vectors** (no structure at all: the hard case for HNSW)",
    }[args.vectors]
    lines = [
        "## Recall latency",
        "",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; workspaces of "
        f"{args.small:,} and {args.large:,} items beside {args.others} of {args.other_size:,} "
        f"(one table, one HNSW graph); {args.users} end users per workspace",
        "- text: generated conversation turns + Zipf-sampled English words (real tsvector/GIN/"
        f"term_stats); vectors (384-d): {vectors}; query vectors from the real local MiniLM "
        "(1 thread)",
        f"- HNSW m=16, ef_construction=64; ef_search = 2 x candidates (min 40), iterative scan "
        f"relaxed_order; {args.candidates} candidates per leg (`CMG_MEMORY_CANDIDATES`); k=10; "
        f"sequential queries; at most {args.series_seconds:g} s per series",
        "- `Memory.search` runs the lexical leg on a second connection while the query is "
        "embedded; the legs use plain psycopg connections in autocommit (`memory.db.ReadPool`)",
        *(f"- {n}" for n in notes),
        "",
        "| items | step | n | p50 ms | p95 ms | p99 ms | mean ms |",
        "| --: | --- | --: | --: | --: | --: | --: |",
        *(_rows(stage) for stage in stages),
        "",
    ]
    for stage in stages:
        samples = stage.timings.get(HYBRID, [])
        p95 = float(np.percentile(samples, 95)) if samples else float("nan")
        verdict = "met" if p95 <= TARGET_MS else "MISSED"
        lines.append(
            f"- {stage.size:,} items, {HYBRID}: p95 {p95:.2f} ms vs {TARGET_MS:g} ms: {verdict}"
        )
    for stage in stages:
        overlap, top10, asked = stage.agreement
        retries = f"; {stage.http_retries} HTTP searches answered 503 first" * bool(
            stage.http_retries
        )
        lines += [
            f"- {stage.size:,} items: the lexical leg returned {overlap:.1%} of the top "
            f"{args.candidates} of BM25 over every matching item ({top10:.1%} of its top 10; "
            f"{asked} queries)",
            f"- {stage.size:,} items: box busy up to {stage.busy:.2f} cores before a series; BM25 "
            f"document count (`DocCounts`, refreshed in the background every 30 s per workspace "
            f"and process): {stage.counts_ms:.1f} ms{retries}",
        ]
    for stage in stages:
        lines += ["", f"### EXPLAIN ANALYZE at {stage.size:,} items (key lines)", ""]
        for plan in stage.plans:
            lines += ["```", plan, "```"]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.recall_bench", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--small", type=int, default=10_000, help="the small workspace (10000)")
    parser.add_argument("--large", type=int, default=100_000, help="the large one (100000)")
    parser.add_argument("--others", type=int, default=10, help="other workspaces (10)")
    parser.add_argument("--other-size", type=int, default=10_000, help="items in each (10000)")
    parser.add_argument("--users", type=int, default=100, help="end users per workspace (100)")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per series (300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries first (20)")
    parser.add_argument("--series-seconds", type=float, default=60.0,
                        help="stop a series after this long (60)")  # fmt: skip
    parser.add_argument("--indexed-sample", type=int, default=2000,
                        help="rows loaded into the indexed table to time it (2000)")  # fmt: skip
    parser.add_argument("--candidates", type=int, default=Settings().memory_candidates,
                        help="candidates per leg (CMG_MEMORY_CANDIDATES' default)")  # fmt: skip
    parser.add_argument("--no-http", dest="http", action="store_false",
                        help="skip the gateway HTTP figure")  # fmt: skip
    parser.add_argument("--vectors", choices=("turns", "random"), default="turns",
                        help="item vectors: the real vector of the item's turn plus noise "
                        "(turns), or random unit vectors (random)")  # fmt: skip
    parser.add_argument("--keep-dir", type=Path, default=None,
                        help="data dir to load into and keep; when it is already loaded, reuse "
                        "it (no COPY, no index builds: minutes, not 20). Same sizes!")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench-results")
    return parser


if __name__ == "__main__":
    main()
