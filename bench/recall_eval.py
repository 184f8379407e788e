"""``make eval``: memory quality: recall@5, recall@10 and MRR of vector, full-text and hybrid.

    python -m bench.recall_eval               # ingest, score over HTTP, weight sweep in-process
    python -m bench.recall_eval --no-sweep    # just the three modes over HTTP
    python -m bench.recall_eval --personas 10 # smaller, faster

The data is generated (``bench/conversations.py``: 40 personas x 8 sessions x ~10 turns and 520
questions). Every turn goes through the memory API (``POST /v1/memory/items?wait=true``) of a
real gateway, embedded by a real ``python -m gateway worker``; every question goes through
``GET /v1/memory/search`` scoped to its persona (``user=``) in each mode. The sweep then calls
``memory.recall.search`` in-process on the same database with other fusion constants (see
``bench/recall_sweep.py``). Loopback only; every process and the temp dir are gone at exit.
Results: the tables on stdout and in ``bench-results/recall-eval.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import conversations, recall_score
from bench.conversations import Dataset, Question, Turn
from bench.memory_stack import Api, Stack, memory_stack

ROOT = Path(__file__).resolve().parents[1]
MODES = {"vector-only": "vector", "full-text-only": "lexical", "hybrid": "hybrid"}
_STALE_OUTBOX_SECONDS = 1.0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    data = conversations.build(args.personas)
    started = time.monotonic()
    notes: list[str] = []
    with memory_stack(args.results_dir / "recall-eval-logs") as stack:
        workspace_id, key = stack.tenant("recall-eval")
        stack.start_gateway()
        worker = stack.start_worker()
        api = Api(stack.gateway_url, key)
        try:
            with _embedding_backstop(stack, workspace_id, worker, notes):
                ingest_s = ingest(api, data.turns, args.batch)
            notes.append(
                f"ingested {len(data.turns)} turns in {ingest_s:.1f} s "
                f"({len(data.turns) / ingest_s:.0f}/s, batches of {args.batch}, `?wait=true`)"
            )
            search_started = time.monotonic()
            rankings = {label: ask(api, data.questions, mode) for label, mode in MODES.items()}
            searches = len(MODES) * len(data.questions)
            notes.append(
                f"{searches} HTTP searches in {time.monotonic() - search_started:.1f} s, k=10"
            )
        finally:
            api.close()
        sweep_md = ""
        if args.sweep:
            from bench import recall_sweep

            sweep_md = recall_sweep.run(stack.database_url, workspace_id, data.questions)
        overlap = _overlap_line(stack, data)
        notes += stack.notes
    notes.append(f"total {time.monotonic() - started:.0f} s")
    report = render(data, rankings, notes, overlap) + sweep_md
    out = args.results_dir / "recall-eval.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print("\n" + report, flush=True)


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


def ask(api: Api, questions: Sequence[Question], mode: str) -> list[list[str]]:
    return [
        [
            str(hit["metadata"].get("key"))
            for hit in api.search(q.text, k=10, mode=mode, user=q.user)
        ]
        for q in questions
    ]


@contextlib.contextmanager
def _embedding_backstop(
    stack: Stack, workspace_id: str, worker: bool, notes: list[str]
) -> Iterator[None]:
    """What the eval must not depend on: outbox rows left pending (no relay in the gateway)
    are pushed to RQ by this thread; with no worker command, it embeds them itself with the
    job's own function (``workers.embedding.embed``)."""
    from redis import Redis
    from sqlalchemy import text
    from sqlalchemy.orm import sessionmaker

    from memory.db import sync_engine
    from workers import embedding
    from workers.outbox import drain_sync

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
                embedded[0] += embedding.embed(engine, embedder, ids)

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
                "(workers.embedding.embed, the embed job's own function)"
            )


def _overlap_line(stack: Stack, data: Dataset) -> str:
    """How many content lexemes each category's questions share with their gold statements."""
    from sqlalchemy import create_engine, text

    from memory.db import sqlalchemy_url

    by_key = {t.key: t.content for t in data.turns}
    engine = create_engine(sqlalchemy_url(stack.database_url))
    sums: dict[str, list[int]] = {}
    query = text(
        "SELECT count(*) FROM (SELECT unnest(tsvector_to_array(to_tsvector('english', :q))) "
        "INTERSECT SELECT unnest(tsvector_to_array(to_tsvector('english', :d)))) AS shared"
    )
    try:
        with engine.connect() as conn:
            for q in data.questions:
                gold = " ".join(by_key[k] for group in q.gold for k in sorted(group))
                shared = conn.execute(query, {"q": q.text, "d": gold}).scalar_one()
                sums.setdefault(q.category, []).append(int(shared))
    finally:
        engine.dispose()
    return ", ".join(f"{c} {sum(v) / len(v):.1f}" for c, v in sums.items())


def render(
    data: Dataset, rankings: dict[str, list[list[str]]], notes: list[str], overlap: str
) -> str:
    scores = {label: recall_score.score(data.questions, r) for label, r in rankings.items()}
    first = next(iter(scores.values()))
    latest = {label: recall_score.latest_first(data.questions, r) for label, r in rankings.items()}
    users = len({t.user for t in data.turns})
    threads = len({t.thread_id for t in data.turns})
    lines = [
        "## Recall eval (memory quality)",
        "",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; generated data (seed {conversations.SEED}): "
        f"{users} personas, {threads} threads, {len(data.turns)} turns, "
        f"{len(data.questions)} questions ({recall_score.counts_line(first)})",
        "- through the gateway's HTTP API: `POST /v1/memory/items?wait=true`, "
        "`GET /v1/memory/search?user=<persona>&k=10&mode=vector|lexical|hybrid`",
        f"- content lexemes a question shares with its gold statement(s), mean: {overlap}",
        *(f"- {n}" for n in notes),
        "",
        recall_score.table(scores),
        "",
        "Updated facts, share of questions where the latest statement ranks above the stale "
        "one: " + ", ".join(f"{label} {v:.2f}" for label, v in latest.items()),
        "",
        "Where hybrid's ranking comes from, per category: which leg has the (first) gold item in "
        "its top 10, and how hybrid's rank of it compares with the better leg's:",
        "",
        _diagnosis(data.questions, rankings),
        "",
    ]
    return "\n".join(lines)


def _diagnosis(questions: Sequence[Question], rankings: dict[str, list[list[str]]]) -> str:
    rows: dict[str, list[int]] = {}
    modes = [rankings["vector-only"], rankings["full-text-only"], rankings["hybrid"]]
    for n, q in enumerate(questions):
        v, lx, h = (recall_score.ranks(q, r[n])[0] for r in modes)
        best = min(r for r in (v, lx) if r is not None) if (v or lx) else None
        row = rows.setdefault(q.category, [0] * 7)
        row[0] += 1
        row[1] += v is not None and lx is not None
        row[2] += v is not None and lx is None
        row[3] += v is None and lx is not None
        row[4] += v is None and lx is None
        row[5] += best is not None and (h is None or h > best)
        row[6] += best is not None and h is not None and h < best
    lines = [
        "| category | questions | both legs | vector only | full-text only | neither | "
        "hybrid below the better leg | hybrid above it |",
        "| --- | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for category, r in rows.items():
        lines.append(f"| {category} | " + " | ".join(str(x) for x in r) + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.recall_eval", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--personas", type=int, default=conversations.PERSONAS)
    parser.add_argument("--batch", type=int, default=200, help="items per POST (200)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="skip the in-process sweep of the fusion constants")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench-results")
    return parser


if __name__ == "__main__":
    main()
