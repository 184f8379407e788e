"""Recall latency at 10k and 100k items in one workspace, with 10 other workspaces of 10k present.

    python -m bench.recall_bench                    # up to 300 queries per series
    python -m bench.recall_bench --queries 100 --no-http

One table holds 10 workspaces of 10k, one of 10k and one of 100k (210k rows), loaded by COPY
(``bench/synthetic_items.py``: realistic text, SYNTHETIC random unit vectors) with the vector and
text indexes dropped, then indexed once; a further sample goes into the indexed table to time
that way of loading too. The 10k workspace is measured with the 100k one present (4.8% of the
HNSW graph instead of 9%: slightly harsher than 10 x 10k alone). Each query is timed in-process,
one step at a time: the query embedding alone (local MiniLM, one thread), the vector leg, the
lexical leg, the full hybrid ``Memory.search`` (embedding included, as the gateway does it),
end-user scoped too, then ``GET /v1/memory/search`` of a running gateway. Then the same with the
proposed changes (see ``PROPOSED``), applied in-process by setting ``memory.recall`` constants
and the candidate depth, with the lexical leg run while the query is being embedded. A series
stops after ``--series-seconds``. EXPLAIN ANALYZE of both legs shows which indexes serve them.
Loopback only; everything started here is stopped, the temp dir deleted. Results:
``bench-results/recall-bench.md``.
"""

from __future__ import annotations

import argparse
import asyncio
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
from memory import recall
from memory.service import Knobs, Memory

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = 50  # CMG_MEMORY_CANDIDATES' default
TARGET_MS = 15.0
# The proposal measured here: (memory.recall constants, candidates per leg); its quality is in
# the recall eval's sweep (bench/recall_sweep.py, RECOMMENDED, depth 20).
PROPOSED = ({"_COMMON_FRACTION": 0.02, "W_VECTOR": 1.5, "W_LEXICAL": 1.0, "RRF_K": 10}, 20)
_INDEXES = {
    "memory_items_embedding": "CREATE INDEX memory_items_embedding ON memory_items "
    "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)",
    "memory_items_tsv": "CREATE INDEX memory_items_tsv ON memory_items USING gin (tsv)",
}
_GIN_COLUMNS = "(workspace_id, tsv)"
Timed = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


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
            notes += [f"reused the data loaded {loaded['at']} in `--keep-dir`:", *loaded["notes"]]
        stages = [
            Stage(args.small, small, queries[:half]),
            Stage(args.large, large, queries[half:]),
        ]
        if loaded is None:
            with psycopg.connect(stack.database_url) as conn:
                _load(conn, stages, others, texts, args, notes)
            if args.keep_dir:
                _remember_load(args.keep_dir, small, large, notes)
        if args.http:
            stack.start_gateway()
        for stage, key in zip(stages, (key_small, key_large), strict=True):
            print(f"== {stage.size:,} items: {len(stage.queries)} queries", flush=True)
            stage.busy = wait_quiet(0.5, 30)
            asyncio.run(_in_process(stack.database_url, stage, args))
            if args.http:
                _over_http(stack.gateway_url, key, stage, args)
            print(_rows(stage), flush=True)
        if args.gin:
            with psycopg.connect(stack.database_url) as conn:
                notes.append(_composite_gin(conn))
            for stage in stages:
                asyncio.run(_with_composite_gin(stack.database_url, stage, args))
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
    marker = {"small": small, "large": large, "at": at, "notes": [f"  - {n}" for n in notes]}
    (keep_dir / _LOADED).write_text(json.dumps(marker, indent=1))


def _new_key(stack: Any, workspace: str) -> str:
    from bench.memory_stack import run_db
    from gateway import workspaces

    async def work(session: Any) -> str:
        secret, _ = await workspaces.create_key(session, workspace)
        return secret

    key: str = run_db(stack.database_url, work)
    return key


def _load(
    conn: psycopg.Connection, stages: list[Stage], others: list[str],
    texts: synthetic_items.Texts, args: argparse.Namespace, notes: list[str],
) -> None:  # fmt: skip
    """Everything but a sample without the indexes, the indexes, then the sample with them."""
    for name in _INDEXES:
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
    conn.execute("SET maintenance_work_mem = '1GB'")
    for name, ddl in _INDEXES.items():
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


def _composite_gin(conn: psycopg.Connection) -> str:
    """The lexical leg's candidates from one workspace only: GIN over (workspace_id, tsv)."""
    t0 = time.perf_counter()
    conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    conn.execute(f"CREATE INDEX memory_items_ws_tsv ON memory_items USING gin {_GIN_COLUMNS}")
    conn.execute("ANALYZE memory_items")
    conn.commit()
    return (
        f"`CREATE EXTENSION btree_gin; CREATE INDEX ... USING gin {_GIN_COLUMNS}` (for the "
        f"last rows): {time.perf_counter() - t0:.1f} s"
    )


# --- measuring ---


async def _in_process(database_url: str, stage: Stage, args: argparse.Namespace) -> None:
    from memory.db import async_engine, sessionmaker
    from memory.embedder import LocalMiniLM

    engine = async_engine(database_url, pool_size=4)
    sessions = sessionmaker(engine)
    embedder = LocalMiniLM(threads=1)
    everyone = recall.Filters(stage.workspace)
    try:
        async with sessions() as session:
            t0 = time.perf_counter()
            await recall.DocCounts().get(session, stage.workspace)
            stage.counts_ms = (time.perf_counter() - t0) * 1000
        vectors: dict[str, list[float]] = {}
        async for q, timed in _series(stage, "embed only", args):
            vectors[q] = [float(x) for x in (await timed(lambda q=q: _embed(embedder, q)))[0]]
        for label, depth, constants in (
            ("", CANDIDATES, {}),
            ("proposed: ", PROPOSED[1], PROPOSED[0]),
        ):
            with _constants(constants):
                await _legs(sessions, embedder, stage, vectors, label, depth, args)
        stage.plans = await explain_legs(sessions, everyone, stage.queries[-1], vectors.get(
            stage.queries[-1]) or (await _embed(embedder, stage.queries[-1]))[0])  # fmt: skip
        with _constants(PROPOSED[0]):
            stage.plans += await explain_legs(
                sessions, everyone, stage.queries[-1], vectors.get(stage.queries[-1]) or [],
                legs=("lexical",), note=f"_COMMON_FRACTION={PROPOSED[0]['_COMMON_FRACTION']}",
            )  # fmt: skip
    finally:
        await engine.dispose()


async def _with_composite_gin(database_url: str, stage: Stage, args: argparse.Namespace) -> None:
    from memory.db import async_engine, sessionmaker
    from memory.embedder import LocalMiniLM

    engine = async_engine(database_url, pool_size=4)
    sessions = sessionmaker(engine)
    everyone = recall.Filters(stage.workspace)
    label = f"proposed + GIN {_GIN_COLUMNS}: "
    try:
        with _constants(PROPOSED[0]):
            counts = recall.DocCounts()
            async for q, timed in _series(stage, f"{label}lexical leg", args):
                await timed(lambda q=q: _lexical(sessions, everyone, q, PROPOSED[1], counts))
            knobs = Knobs(max_tokens=1000, max_items=8, min_similarity=0.35,
                          candidates=PROPOSED[1], summary_threshold=2000)  # fmt: skip
            memory = Memory(sessions, LocalMiniLM(threads=1), knobs)
            async for q, timed in _series(stage, f"{label}hybrid, lexical during embedding", args):
                await timed(lambda q=q: _overlapped(memory, everyone, q))
            stage.plans += await explain_legs(
                sessions, everyone, stage.queries[-1], [], legs=("lexical",),
                note=f"proposed, GIN {_GIN_COLUMNS}",
            )  # fmt: skip
    finally:
        await engine.dispose()


async def _lexical(
    sessions: Any, filters: recall.Filters, q: str, depth: int, counts: recall.DocCounts
) -> Any:
    async with sessions() as session:
        hits = await recall.lexical_leg(session, filters, q, depth, counts)
        await session.rollback()
    return hits


async def _legs(
    sessions: Any, embedder: Any, stage: Stage, vectors: dict[str, list[float]], label: str,
    depth: int, args: argparse.Namespace,
) -> None:  # fmt: skip
    everyone = recall.Filters(stage.workspace)
    counts = recall.DocCounts()

    async def leg(run: Callable[[Any], Awaitable[Any]]) -> Any:
        async with sessions() as session:
            result = await run(session)
            await session.rollback()
        return result

    async for q, timed in _series(stage, f"{label}vector leg (candidates {depth})", args):
        if q in vectors:
            await timed(
                lambda q=q: leg(lambda s: recall.vector_leg(s, everyone, vectors[q], depth))
            )
    async for q, timed in _series(stage, f"{label}lexical leg", args):
        await timed(lambda q=q: leg(lambda s: recall.lexical_leg(s, everyone, q, depth, counts)))
    knobs = Knobs(max_tokens=1000, max_items=8, min_similarity=0.35, candidates=depth,
                  summary_threshold=2000)  # fmt: skip
    series = [
        ("hybrid Memory.search (embed included)", everyone, _plain),
        ("hybrid, end-user scoped (embed included)", recall.Filters(stage.workspace, "user-0007"),
         _plain),
    ]  # fmt: skip
    if label:
        series = [(f"{label}hybrid, lexical leg during the embedding", everyone, _overlapped)]
    for name, filters, search in series:
        memory = Memory(sessions, embedder, knobs)  # a fresh query-embedding cache
        async for q, timed in _series(stage, name, args):
            await timed(lambda q=q, m=memory, f=filters, s=search: s(m, f, q))


async def _series(
    stage: Stage, label: str, args: argparse.Namespace
) -> AsyncIterator[tuple[str, Timed]]:
    """(query, timer) pairs: warm-up first, then until the queries or ``--series-seconds`` end."""
    samples = stage.timings.setdefault(label, [])
    deadline = time.monotonic() + args.series_seconds
    for n, q in enumerate(stage.queries):
        if time.monotonic() > deadline:
            return

        async def timed(call: Callable[[], Awaitable[Any]], n: int = n) -> Any:
            t0 = time.perf_counter()
            result = await call()
            if n >= args.warmup:
                samples.append((time.perf_counter() - t0) * 1000)
            return result

        yield q, timed


async def _embed(embedder: Any, q: str) -> Any:
    return await asyncio.to_thread(embedder.embed, [q])


async def _plain(memory: Memory, filters: recall.Filters, q: str) -> Any:
    return await memory.search(filters, q, 10)


async def _overlapped(memory: Memory, filters: recall.Filters, q: str) -> Any:
    """``Memory.search`` with the lexical leg running while the query is embedded."""
    embedding = asyncio.create_task(memory.embed_query(q))
    depth = memory.knobs.candidates
    async with memory.sessions() as session:
        lexical = await recall.lexical_leg(session, filters, q, depth, memory.counts)
        vector = await embedding

        async def prefetched(*_: Any) -> list[recall.Hit]:
            return lexical

        saved, recall.lexical_leg = recall.lexical_leg, prefetched  # type: ignore[assignment]
        try:
            hits = await recall.search(
                session, filters, q, vector, limit=10, candidates=depth,
                min_similarity=-1.0, counts=memory.counts,
            )  # fmt: skip
        finally:
            recall.lexical_leg = saved  # type: ignore[assignment]
        await session.rollback()
    return hits


class _constants:
    """Set ``memory.recall`` module constants for a block, then restore them."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> None:
        for name, value in self._values.items():
            self._saved[name] = getattr(recall, name)
            setattr(recall, name, value)

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved.items():
            setattr(recall, name, value)


def _over_http(url: str, key: str, stage: Stage, args: argparse.Namespace) -> None:
    api = Api(url, key)
    samples = stage.timings.setdefault("gateway HTTP hybrid (embed included)", [])
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
    constants = ", ".join(f"{k}={v}" for k, v in PROPOSED[0].items())
    lines = [
        "## Recall latency",
        "",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; workspaces of "
        f"{args.small:,} and {args.large:,} items beside {args.others} of {args.other_size:,} "
        f"(one table, one HNSW graph); {args.users} end users per workspace",
        "- text: generated conversation turns + Zipf-sampled English words (real tsvector/GIN/"
        "term_stats); **vectors: synthetic random unit vectors (384-d)**, query vectors from the "
        "real local MiniLM (1 thread). Latency depends on the index, not on the semantics",
        f"- HNSW m=16, ef_construction=64; ef_search = 2 x candidates (min 40), iterative scan "
        f"relaxed_order; k=10; sequential queries; at most {args.series_seconds} s per series",
        f"- `proposed:` rows: `memory.recall` {constants}; candidates per leg {PROPOSED[1]} "
        "(`CMG_MEMORY_CANDIDATES`); the lexical leg runs while the query is embedded",
        *(f"- {n}" for n in notes),
        "",
        "| items | step | n | p50 ms | p95 ms | p99 ms | mean ms |",
        "| --: | --- | --: | --: | --: | --: | --: |",
        *(_rows(stage) for stage in stages),
        "",
    ]
    for stage in stages:
        for label in (
            "hybrid Memory.search (embed included)",
            "proposed: hybrid, lexical leg during the embedding",
            f"proposed + GIN {_GIN_COLUMNS}: hybrid, lexical during embedding",
        ):
            samples = stage.timings.get(label, [])
            p95 = float(np.percentile(samples, 95)) if samples else float("nan")
            verdict = "met" if p95 <= TARGET_MS else "MISSED"
            lines.append(f"- {stage.size:,} items, {label}: p95 {p95:.2f} ms vs {TARGET_MS:g} ms: "
                         f"{verdict}")  # fmt: skip
        retries = f"; {stage.http_retries} HTTP searches answered 503 first" * bool(
            stage.http_retries
        )
        lines.append(
            f"- {stage.size:,} items: box busy {stage.busy:.2f} cores before measuring; BM25 "
            f"document count refresh (`DocCounts`, every 30 s per workspace and process): "
            f"{stage.counts_ms:.1f} ms{retries}"
        )
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
    parser.add_argument("--no-gin", dest="gin", action="store_false",
                        help="skip the (workspace_id, tsv) GIN index variant")  # fmt: skip
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
