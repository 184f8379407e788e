"""Scoring for the recall eval: recall@k, MRR and latency, per category, and the Markdown tables.

The measure of the LoCoMo dev README, used for both sets. A ranking is the list of turn keys a
search returned, best first (up to ``DEPTH``). A question's gold is one group of acceptable keys
per piece of evidence (a LoCoMo evidence turn; a synthetic statement, with the assistant's
reply when that repeats the value). For one question:

- recall@k = evidence groups with a key in the top k / evidence groups (k = 5, 10, 20), and
  R@100 as the ceiling a re-ranking of the same 100 could reach;
- MRR = 1 / rank of the first evidence key in the top ``DEPTH`` (0 if none).

A category's figure is the mean over its questions; "overall" is the mean over the questions of
the scored categories (LoCoMo: 1-4; adversarial questions are reported but not in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.conversations import Question

KS = (5, 10, 20)
DEPTH = 100
OVERALL = "overall"


def recall_at(question: Question, ranking: Sequence[str], k: int) -> float:
    top = set(ranking[:k])
    return sum(1 for group in question.gold if group & top) / len(question.gold)


def reciprocal_rank(question: Question, ranking: Sequence[str]) -> float:
    gold = frozenset().union(*question.gold)
    return next((1 / (i + 1) for i, key in enumerate(ranking[:DEPTH]) if key in gold), 0.0)


@dataclass(frozen=True)
class Score:
    recall: tuple[float, ...]  # at each of KS, then at DEPTH
    mrr: float
    n: int


def _mean(questions: Sequence[Question], rankings: Sequence[Sequence[str]]) -> Score:
    n = len(questions) or 1
    recall = tuple(
        sum(recall_at(q, r, k) for q, r in zip(questions, rankings, strict=True)) / n
        for k in (*KS, DEPTH)
    )
    mrr = sum(reciprocal_rank(q, r) for q, r in zip(questions, rankings, strict=True)) / n
    return Score(recall, mrr, len(questions))


def score(
    questions: Sequence[Question], rankings: Sequence[Sequence[str]], scored: Sequence[str]
) -> dict[str, Score]:
    """Per category (in ``scored`` order, then the others), and overall over ``scored``."""
    order = [*scored, *sorted({q.category for q in questions} - set(scored))]
    out: dict[str, Score] = {}
    for category in [*order, OVERALL]:
        picked = [
            (q, r)
            for q, r in zip(questions, rankings, strict=True)
            if q.category == category or (category == OVERALL and q.category in scored)
        ]
        if picked:
            out[category] = _mean([q for q, _ in picked], [r for _, r in picked])
    return out


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0.0


def latest_first(questions: Sequence[Question], rankings: Sequence[Sequence[str]]) -> float | None:
    """Questions with a stale statement: share where the latest one ranks above every stale one."""
    wins = total = 0
    for question, ranking in zip(questions, rankings, strict=True):
        if not question.stale:
            continue
        total += 1
        latest = next((i for i, k in enumerate(ranking) if k in question.gold[0]), None)
        stale = next((i for i, k in enumerate(ranking) if k in question.stale), None)
        wins += latest is not None and (stale is None or latest < stale)
    return wins / total if total else None


def table(systems: dict[str, dict[str, Score]]) -> str:
    """One row per category, one column group per system (R@5, R@10, R@20, MRR, R@100)."""
    names = list(systems)
    head = "| category | n | " + " | ".join(
        f"{name} R@5 | R@10 | R@20 | MRR | R@100" for name in names
    )
    lines = [head + " |", "| --- | --: |" + " --: |" * (5 * len(names))]
    for category, first in next(iter(systems.values())).items():
        cells = []
        for name in names:
            s = systems[name][category]
            cells.append(" | ".join(f"{v:.3f}" for v in (*s.recall[:-1], s.mrr, s.recall[-1])))
        label = f"**{category}**" if category == OVERALL else category
        lines.append(f"| {label} | {first.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
