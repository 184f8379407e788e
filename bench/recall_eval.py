"""``make eval``: memory quality on real and generated conversations, through the HTTP API.

    python -m bench.recall_eval                 # both sets, hybrid + each leg, BM25 beside
    python -m bench.recall_eval --personas 10   # a smaller synthetic set, faster
    python -m bench.recall_eval --modes hybrid  # the product's search only
    python -m bench.recall_eval --locomo PATH   # another file of the LoCoMo format
    python -m bench.recall_eval --sets locomo   # one set only (locomo or synthetic)

Two sets, each in a workspace of its own: the LoCoMo dev conversations (``bench/locomo.py``,
read from ``../shared/data/locomo-dev/``; said and skipped when absent) and the generated set
(``bench/conversations.py``). Every turn goes through ``POST /v1/memory/items?wait=true`` of a
real gateway, embedded by a real ``python -m gateway worker``; every question through
``GET /v1/memory/search?k=100&user=<end user>``, timed at the client. A plain BM25 ranks the
same turns in-process (``bench/bm25.py``) for the baseline column. Scores: ``bench/recall_score``.
Loopback only; every process and the temp dir are gone at exit. Results: the tables on stdout
and in ``bench-results/recall-eval.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import bm25, conversations, locomo, recall_score
from bench.conversations import Dataset, Question, Turn
from bench.memory_stack import Api, Stack, memory_stack

ROOT = Path(__file__).resolve().parents[1]
MODES = {"hybrid": "product (hybrid)", "vector": "vector leg", "lexical": "full-text leg"}
SETS = ("locomo", "synthetic")
BASELINE = "BM25"
_STALE_OUTBOX_SECONDS = 1.0


@dataclass
class EvalSet:
    name: str
    data: Dataset
    scored: Sequence[str]  # the categories in the overall figure
    source: str
    rankings: dict[str, list[list[str]]] = field(default_factory=dict)
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    notes: list[str] = []
    sets = _sets(args, notes)
    with memory_stack(args.results_dir / "recall-eval-logs") as stack:
        stack.start_gateway()
        worker = stack.start_worker()
        for s in sets:
            measure(stack, worker, s, args)
        notes += stack.notes
    notes.append(f"total {time.monotonic() - started:.0f} s")
    report = render(sets, notes)
    out = args.results_dir / "recall-eval.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print("\n" + report, flush=True)


def _sets(args: argparse.Namespace, notes: list[str]) -> list[EvalSet]:
    sets: list[EvalSet] = []
    path = args.locomo or locomo.DEFAULT_PATH
    if "locomo" in args.sets and locomo.available(path):
        source = f"`{path.name}` (LoCoMo, CC BY-NC 4.0, dev split)"
        sets.append(EvalSet("LoCoMo dev", locomo.load(path), locomo.SCORED, source))
    elif "locomo" in args.sets:
        notes.append(f"LoCoMo dev data absent ({path}): not measured")
        print(f"recall-eval: {notes[-1]}", flush=True)
    if "synthetic" in args.sets:
        source = f"generated (`bench/conversations.py`, seed {conversations.SEED})"
        synthetic = conversations.build(args.personas)
        sets.append(EvalSet("synthetic", synthetic, conversations.CATEGORIES, source))
    return sets


def measure(stack: Stack, worker: bool, s: EvalSet, args: argparse.Namespace) -> None:
    """Ingest one set into a new workspace, ask its questions in each mode, and BM25."""
    workspace_id, key = stack.tenant(f"recall-eval-{s.name.split()[0].lower()}")
    api = Api(stack.gateway_url, key)
    try:
        with _embedding_backstop(stack, workspace_id, worker, s.notes):
            seconds = ingest(api, s.data.turns, args.batch)
        s.notes.append(
            f"ingested {len(s.data.turns)} turns in {seconds:.1f} s "
            f"({len(s.data.turns) / seconds:.0f}/s, batches of {args.batch}, `?wait=true`)"
        )
        for mode in args.modes:
            s.rankings[MODES[mode]], s.latency_ms[MODES[mode]] = ask(api, s.data.questions, mode)
    finally:
        api.close()
    index = bm25.indexes([(t.user, t.key, t.content) for t in s.data.turns])
    s.rankings[BASELINE], s.latency_ms[BASELINE] = _timed(
        lambda q: index[q.user].search(q.text, recall_score.DEPTH), s.data.questions
    )


def ingest(api: Api, turns: Sequence[Turn], batch: int) -> float:
    started = time.monotonic()
    for start in range(0, len(turns), batch):
        items = [_item(t) for t in turns[start : start + batch]]
        status, body = api.add_items(items, wait=True)
        if status not in (200, 202):
            raise RuntimeError(f"POST /v1/memory/items answered {status}: {body}")
        if status == 202:
            print(f"  batch at {start}: not searchable within the gateway's wait", flush=True)
    return time.monotonic() - started


def _item(turn: Turn) -> dict[str, object]:
    return {
        "content": turn.content,
        "role": turn.role,
        "thread_id": turn.thread_id,
        "user": turn.user,
        "kind": "message",
        "created_at": turn.created_at.isoformat(),
        "metadata": {"key": turn.key},
    }


def ask(api: Api, questions: Sequence[Question], mode: str) -> tuple[list[list[str]], list[float]]:
    def one(q: Question) -> list[str]:
        hits = api.search(q.text, k=recall_score.DEPTH, mode=mode, user=q.user)
        return [str(hit["metadata"].get("key")) for hit in hits]

    return _timed(one, questions)


def _timed(
    rank: Callable[[Question], list[str]], questions: Sequence[Question]
) -> tuple[list[list[str]], list[float]]:
    rankings, latency = [], []
    for q in questions:
        started = time.perf_counter()
        rankings.append(rank(q))
        latency.append((time.perf_counter() - started) * 1000)
    return rankings, latency


@contextlib.contextmanager
def _embedding_backstop(
    stack: Stack, workspace_id: str, worker: bool, notes: list[str]
) -> Iterator[None]:
    """What the eval must not depend on: outbox rows left pending (no relay in the gateway)
    are pushed to RQ by this thread; with no worker command, it embeds them itself with the
    job's own function (``workers.vectors.embed``)."""
    from redis import Redis
    from sqlalchemy import text
    from sqlalchemy.orm import sessionmaker

    from memory.db import sync_engine
    from memory.outbox import drain_sync
    from workers import vectors

    engine = sync_engine(stack.database_url)
    sessions = sessionmaker(engine)
    redis = Redis.from_url(stack.redis_url)
    stop = threading.Event()
    pushed = [0]
    embedded = [0]

    def loop() -> None:
        embedder = None
        while not stop.wait(0.25):
            if worker:
                with engine.connect() as conn:
                    stale = conn.execute(
                        text(
                            "SELECT count(*) FROM outbox WHERE pushed_at IS NULL "
                            "AND created_at < now() - make_interval(secs => :age)"
                        ),
                        {"age": _STALE_OUTBOX_SECONDS},
                    ).scalar_one()
                if stale:
                    pushed[0] += drain_sync(sessions, redis)
                continue
            if embedder is None:
                from memory.embedder import LocalMiniLM

                embedder = LocalMiniLM(threads=1)
            with engine.connect() as conn:
                ids = list(
                    conn.execute(
                        text(
                            "SELECT id FROM memory_items WHERE workspace_id = :ws "
                            "AND embedding IS NULL ORDER BY created_at LIMIT 256"
                        ),
                        {"ws": workspace_id},
                    ).scalars()
                )
            if ids:
                embedded[0] += vectors.embed(engine, embedder, ids)

    thread = threading.Thread(target=loop, name="embedding-backstop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        redis.close()
        engine.dispose()
        if pushed[0]:
            notes.append(
                f"the harness pushed {pushed[0]} outbox row(s) left pending > "
                f"{_STALE_OUTBOX_SECONDS:.0f} s: the gateway did not push them to RQ itself "
                "(no outbox relay kicked), so `?wait=true` alone would have timed out"
            )
        if embedded[0]:
            notes.append(
                f"no worker: the harness embedded {embedded[0]} items in-process "
                "(workers.vectors.embed, the embed job's own function)"
            )


def render(sets: Sequence[EvalSet], notes: Sequence[str]) -> str:
    lines = [
        "## Recall eval (memory quality)",
        "",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; through the gateway's HTTP API: "
        "`POST /v1/memory/items?wait=true`, "
        f"`GET /v1/memory/search?user=<end user>&k={recall_score.DEPTH}&mode=...`; "
        f"{BASELINE} (k1 {bm25.K1}, b {bm25.B}, stop words out) in-process over the same turns",
        "- recall@k = share of a question's evidence turns in the top k; MRR = 1 / rank of the "
        f"first in the top {recall_score.DEPTH}; R@{recall_score.DEPTH}: the candidates' ceiling",
        *(f"- {n}" for n in notes),
        "",
    ]
    for s in sets:
        lines += _section(s)
    return "\n".join(lines)


def _section(s: EvalSet) -> list[str]:
    users = len({t.user for t in s.data.turns})
    threads = len({t.thread_id for t in s.data.turns})
    scores = {
        name: recall_score.score(s.data.questions, ranking, s.scored)
        for name, ranking in s.rankings.items()
    }
    left_out = sorted({q.category for q in s.data.questions} - set(s.scored))
    lines = [
        f"### {s.name}",
        "",
        f"- {s.source}: {users} end users, {threads} threads, {len(s.data.turns)} turns, "
        f"{len(s.data.questions)} questions"
        + (f" ({', '.join(left_out)} not in overall)" if left_out else ""),
        *(f"- {n}" for n in s.notes),
        "- search latency, p50 / p95 ms: "
        + ", ".join(
            f"{name} {recall_score.percentile(v, 50):.1f} / {recall_score.percentile(v, 95):.1f}"
            for name, v in s.latency_ms.items()
        )
        + f" ({BASELINE} in-process, the others over HTTP at k={recall_score.DEPTH})",
    ]
    latest = {
        name: recall_score.latest_first(s.data.questions, r) for name, r in s.rankings.items()
    }
    if any(v is not None for v in latest.values()):
        lines.append(
            "- updated facts, latest statement above the stale one: "
            + ", ".join(f"{name} {v:.2f}" for name, v in latest.items() if v is not None)
        )
    return [*lines, "", recall_score.table(scores), ""]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.recall_eval", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--personas", type=int, default=conversations.PERSONAS,
                        help=f"synthetic personas ({conversations.PERSONAS})")  # fmt: skip
    parser.add_argument("--modes", type=_names(MODES),
                        default=list(MODES), help="search modes asked over HTTP, comma-separated "
                        f"({','.join(MODES)}); the first is the product")  # fmt: skip
    parser.add_argument("--sets", type=_names(SETS), default=list(SETS),
                        help=f"sets to measure, comma-separated ({','.join(SETS)})")  # fmt: skip
    parser.add_argument("--locomo", type=Path, default=None,
                        help=f"LoCoMo-format file ({locomo.DEFAULT_PATH})")  # fmt: skip
    parser.add_argument("--batch", type=int, default=200, help="items per POST (200)")
    parser.add_argument("--no-sweep", action="store_true",
                        help="accepted for old scripts; the fusion sweep is gone")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench-results")
    return parser


def _names(allowed: Sequence[str] | dict[str, str]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        names = [n for n in value.split(",") if n]
        if not names or set(names) - set(allowed):
            raise argparse.ArgumentTypeError(f"a comma-separated subset of {','.join(allowed)}")
        return names

    return parse


if __name__ == "__main__":
    main()
