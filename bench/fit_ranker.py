"""Fit the recall ranker (``memory/data/ranker.json``): one command.

    python -m bench.fit_ranker                  # load, gather, validate, write the weights
    python -m bench.fit_ranker --keep /tmp/dev  # reuse a database loaded by bench.recall_dev

Every question of the LoCoMo dev conversations and of the synthetic set goes through the
product's own search (``Memory.search`` with ``explain``, ranker off: the candidates do not
depend on it), and every candidate becomes a row of ``memory.ranker.FEATURES``, labelled 1 when
it is an evidence turn. Validation is leave-one-conversation-out: each LoCoMo conversation, and
each half of the synthetic personas, is scored by a model fitted on the others (printed beside
the unfitted RRF order); the weights written are then fitted on everything.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import conversations
from bench.conversations import Question
from bench.recall_dev import Corpus, in_overall, loaded, memory_for, recall_at, scores
from memory.ranker import DEFAULT_PATH, FEATURES, Ranker, fit_lists


@dataclass
class Sample:
    group: str
    question: Question
    keys: list[str]
    rows: list[list[float]]
    labels: list[int]


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with loaded(args.keep, args.personas) as (database_url, corpora):
        samples = asyncio.run(gather(database_url, corpora))
    groups = sorted({s.group for s in samples})
    for group in groups:
        mine = [s for s in samples if s.group == group]
        found = sum(recall_at(s.question, s.keys) for s in mine) / len(mine)
        per = sum(len(s.rows) for s in mine) / len(mine)
        print(f"{group}: evidence among the candidates (the ceiling) {found:.3f}, {per:.0f} each")
    print("| held out | questions | RRF R@10 | ranker R@10 | 95% interval | RRF MRR | ranker MRR |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for group in groups:
        train = [s for s in samples if s.group != group]
        test = [s for s in samples if s.group == group]
        weights, bias = _fit(train, args.l2)
        model = Ranker(dict(zip(FEATURES, weights, strict=True)), bias)
        before = scores([s.question for s in test], [s.keys for s in test])["overall"]
        ranked = [_rank(model, s) for s in test]
        after = scores([s.question for s in test], ranked)["overall"]
        per_question = zip((s.question for s in test), ranked, strict=True)
        low, high = interval([recall_at(q, r, 10) for q, r in per_question if in_overall(q)])
        print(f"| {group} | {len(test)} | {before[1]:.3f} | {after[1]:.3f} | {low:.3f}-{high:.3f} "
              f"| {before[3]:.3f} | {after[3]:.3f} |")  # fmt: skip
    weights, bias = _fit(samples, args.l2)
    meta = {"fitted": time.strftime("%Y-%m-%d"), "questions": len(samples),
            "rows": sum(len(s.rows) for s in samples), "groups": groups, "l2": args.l2}  # fmt: skip
    Ranker(dict(zip(FEATURES, weights, strict=True)), bias, meta).save(args.out)
    print(
        f"wrote {args.out}: "
        + ", ".join(f"{f} {w:+.2f}" for f, w in zip(FEATURES, weights, strict=True))
    )


async def gather(database_url: str, corpora: Sequence[Corpus]) -> list[Sample]:
    from memory.recall import Filters

    memory = await memory_for(database_url, ranker=None)
    samples = []
    try:
        for corpus in corpora:
            for q in corpus.data.questions:
                hits = await memory.search(
                    Filters(corpus.workspace, q.user), q.text, 10_000, explain=True
                )
                gold = set().union(*q.gold)
                keys = [str(h.metadata.get("key")) for h in hits]
                samples.append(Sample(
                    _group(corpus.name, q), q, keys,
                    [[h.explain["features"][f] for f in FEATURES] for h in hits],
                    [int(k in gold) for k in keys],
                ))  # fmt: skip
    finally:
        await memory.reads.close()
    return samples


def interval(values: Sequence[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean (questions resampled): how far a fold's figure moves
    with the questions drawn, so a difference inside it is not evidence of a better ranker."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def _group(corpus: str, question: Question) -> str:
    """A LoCoMo conversation, or one half of the synthetic personas."""
    if corpus == "synthetic":
        return f"synthetic-{int(question.user.lstrip('u') or 0) % 2}"
    return question.user


def _fit(samples: Sequence[Sample], l2: float) -> tuple[list[float], float]:
    """Each corpus (LoCoMo, synthetic) weighs the same in the fit, whatever its size."""
    sizes = Counter(_corpus(s) for s in samples)
    weights = [1 / sizes[_corpus(s)] for s in samples]
    return fit_lists([(s.rows, s.labels) for s in samples], weights, l2=l2)


def _corpus(sample: Sample) -> str:
    return "synthetic" if sample.group.startswith("synthetic") else "locomo"


def _rank(model: Ranker, sample: Sample) -> list[str]:
    scored = [
        (model.score(dict(zip(FEATURES, row, strict=True))), i) for i, row in enumerate(sample.rows)
    ]
    scored.sort(key=lambda x: -x[0])
    return [sample.keys[i] for _, i in scored]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the database here")
    parser.add_argument("--personas", type=int, default=conversations.PERSONAS)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    return parser


if __name__ == "__main__":
    main()
