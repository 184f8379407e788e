"""The recall dev loop: real store, real worker code, real embedder, in-process; no HTTP.

    python -m bench.recall_dev                    # LoCoMo dev + synthetic, every mode
    python -m bench.recall_dev --keep /tmp/dev    # keep the loaded database for the next run

Loads the LoCoMo dev conversations (``bench.locomo``; one end user per conversation, a thread
per session) and the synthetic set (``bench.conversations``) into two workspaces of an embedded
PostgreSQL, indexes them with the embed job's own code (``workers.vectors.embed``: context,
keys, vectors), then asks every question through ``Memory.search`` and prints R@5/10/20 and MRR
per category beside a plain BM25 over the same turns. ``bench/fit_ranker.py`` reads the
candidates' features through the same path. ``make eval`` is the HTTP measure; this is the fast
one for changing recall.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import conversations
from bench.conversations import Dataset, Question, Turn
from bench.memory_stack import memory_stack

ROOT = Path(__file__).resolve().parents[1]
KS = (5, 10, 20)
_WORDS = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    """a an and are as at be but by for from has have he her his i if in into is it its me my
    no not of on or our she so that the their them then there these they this to was we were
    what when where which who why will with you your do did does how about been had him would
    could should can just than too very also""".split()
)


@dataclass(frozen=True)
class Corpus:
    name: str
    data: Dataset
    workspace: str


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with loaded(args.keep, args.personas) as (database_url, corpora):
        results = asyncio.run(_ask_all(database_url, corpora, args.modes.split(",")))
    for corpus in corpora:
        print(f"\n## {corpus.name}: {len(corpus.data.questions)} questions")
        rows = {"bm25 (plain)": bm25_rankings(corpus.data)}
        rows.update(results[corpus.name])
        print(table(corpus.data.questions, rows))


@dataclass
class _Loaded:
    database_url: str
    corpora: list[Corpus]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.database_url, self.corpora))


class loaded:
    """The stack with both sets loaded and indexed (reused from ``keep`` when it has them)."""

    def __init__(self, keep: Path | None, personas: int) -> None:
        self.keep, self.personas = keep, personas
        self._stack: Any = None

    def __enter__(self) -> _Loaded:
        self._stack = memory_stack(ROOT / "bench-results" / "recall-dev-logs", keep=self.keep)
        stack = self._stack.__enter__()
        sets = {"locomo-dev": load_locomo(), "synthetic": conversations.build(self.personas)}
        marker = self.keep / "recall-dev.json" if self.keep else None
        if marker is not None and marker.is_file():
            spaces = json.loads(marker.read_text())
        else:
            spaces = {}
            for name, data in sets.items():
                spaces[name], _ = stack.tenant(f"dev-{name}-{time.time_ns()}")
                started = time.monotonic()
                count = ingest(stack.database_url, spaces[name], data.turns)
                print(f"{name}: {count} turns indexed in {time.monotonic() - started:.1f} s")
            if marker is not None:
                marker.write_text(json.dumps(spaces))
        return _Loaded(stack.database_url, [Corpus(n, d, spaces[n]) for n, d in sets.items()])

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)


def load_locomo() -> Dataset:
    """The LoCoMo dev conversations, as ``make eval`` loads them (``bench.locomo``)."""
    from bench import locomo

    return locomo.load()


def ingest(database_url: str, workspace: str, turns: Sequence[Turn]) -> int:
    """Store the turns as the memory API does, then run the embed job's code on them."""
    from core.settings import Settings
    from memory import store
    from memory.db import run_transaction, sync_engine
    from memory.embedder import embedder_for
    from workers import vectors

    items = [
        store.NewItem(t.content, "message", t.role, t.thread_id, t.user, {"key": t.key},
                      t.created_at)
        for t in turns
    ]  # fmt: skip
    ids: list[Any] = []
    for start in range(0, len(items), 500):
        batch = items[start : start + 500]
        ids += run_transaction(
            database_url, functools.partial(store.add_items, workspace_id=workspace, items=batch)
        )
    engine = sync_engine(database_url)
    try:
        return vectors.embed(engine, embedder_for(Settings.from_env()), ids)
    finally:
        engine.dispose()


async def _ask_all(
    database_url: str, corpora: Sequence[Corpus], modes: Sequence[str]
) -> dict[str, dict[str, list[list[str]]]]:
    memory = await memory_for(database_url)
    legs = {"hybrid": ("vector", "lexical"), "vector": ("vector",), "lexical": ("lexical",)}
    try:
        out: dict[str, dict[str, list[list[str]]]] = {}
        for corpus in corpora:
            out[corpus.name] = {}
            for mode in modes:
                rankings = []
                for q in corpus.data.questions:
                    hits = await memory.search(_filters(corpus, q), q.text, 100, legs[mode])
                    rankings.append([str(h.metadata.get("key")) for h in hits])
                out[corpus.name][mode] = rankings
        return out
    finally:
        await memory.reads.close()


async def memory_for(database_url: str, ranker: Any = "default") -> Any:
    from core.settings import Settings
    from memory.db import ReadPool
    from memory.embedder import embedder_for
    from memory.ranker import DEFAULT_PATH, Ranker
    from memory.service import Knobs, Memory

    settings = Settings.from_env()
    if ranker == "default":
        ranker = Ranker.load() if DEFAULT_PATH.is_file() else None
    knobs = Knobs(max_tokens=1000, max_items=8, min_similarity=0.35,
                  candidates=settings.memory_candidates, summary_threshold=10**9,
                  ranker=ranker)  # fmt: skip
    return Memory(None, ReadPool(database_url), embedder_for(settings), knobs)  # type: ignore[arg-type]


def _filters(corpus: Corpus, question: Question) -> Any:
    from memory.recall import Filters

    return Filters(corpus.workspace, question.user)


def bm25_rankings(data: Dataset, k1: float = 1.2, b: float = 0.75) -> list[list[str]]:
    """Plain BM25 per end user: lowercased words, stop words removed."""
    by_user: dict[str, list[Turn]] = defaultdict(list)
    for turn in data.turns:
        by_user[turn.user].append(turn)
    index = {}
    for user, turns in by_user.items():
        docs = [Counter(_tokens(t.content)) for t in turns]
        df: Counter[str] = Counter(w for d in docs for w in d)
        avg = sum(sum(d.values()) for d in docs) / len(docs)
        index[user] = (turns, docs, df, avg)
    rankings = []
    for q in data.questions:
        turns, docs, df, avg = index[q.user]
        n = len(docs)
        idf = {w: math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5)) for w in set(_tokens(q.text))}
        scores = []
        for turn, doc in zip(turns, docs, strict=True):
            length = sum(doc.values())
            s = sum(
                idf[w] * doc[w] * (k1 + 1) / (doc[w] + k1 * (1 - b + b * length / avg))
                for w in idf
                if w in doc
            )
            scores.append((s, turn.key))
        scores.sort(key=lambda x: -x[0])
        rankings.append([key for s, key in scores[:100] if s > 0])
    return rankings


def _tokens(text: str) -> list[str]:
    return [w for w in _WORDS.findall(text.lower()) if w not in _STOP]


def scores(
    questions: Sequence[Question], rankings: Sequence[Sequence[str]]
) -> dict[str, list[float]]:
    """Per category (and "overall" = every category but adversarial): R@5, R@10, R@20, MRR."""
    by: dict[str, list[list[float]]] = defaultdict(list)
    for q, ranking in zip(questions, rankings, strict=True):
        row = [recall_at(q, ranking, k) for k in KS]
        first = next(
            (i for i, key in enumerate(ranking[:100], 1) if any(key in g for g in q.gold)), None
        )
        row.append(1 / first if first else 0.0)
        by[q.category].append(row)
        if in_overall(q):
            by["overall"].append(row)
    return {c: [sum(col) / len(rows) for col in zip(*rows, strict=True)] for c, rows in by.items()}


def recall_at(question: Question, ranking: Sequence[str], k: int | None = None) -> float:
    """The share of the question's evidence groups with a turn in the top ``k`` (all: None)."""
    top = set(ranking[:k])
    return sum(1 for g in question.gold if g & top) / len(question.gold)


def in_overall(question: Question) -> bool:
    """Whether a question counts in "overall": every category but adversarial."""
    return question.category != "adversarial"


def table(questions: Sequence[Question], rows: dict[str, list[list[str]]]) -> str:
    cats = [*sorted({q.category for q in questions}), "overall"]
    lines = ["| mode | " + " | ".join(f"{c} R@10" for c in cats) + " | overall R@5 / R@20 / MRR |"]
    lines.append("|---" * (len(cats) + 2) + "|")
    for mode, rankings in rows.items():
        s = scores(questions, rankings)
        o = s["overall"]
        cells = " | ".join(f"{s[c][1]:.3f}" if c in s else "-" for c in cats)
        lines.append(f"| {mode} | {cells} | {o[0]:.3f} / {o[2]:.3f} / {o[3]:.3f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the database here")
    parser.add_argument("--personas", type=int, default=conversations.PERSONAS)
    parser.add_argument("--modes", default="hybrid,lexical,vector")
    return parser


if __name__ == "__main__":
    main()
