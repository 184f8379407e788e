"""Scoring for the recall eval: hit@k ("any" and "all" gold), MRR@10, and the Markdown tables.

A ranking is the list of turn keys a search returned, best first. A question with several gold
groups (multi-hop) is a hit at k under "any" when one group has an item in the top k, and under
"all" when every group has; its reciprocal rank is 1/(rank of the first gold item) for "any" and
1/(rank at which the last group is covered) for "all". Single-fact questions have one group, so
both agree. "overall" counts multi-hop questions under "all".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.conversations import Question

CATEGORIES = ("single", "paraphrase", "multi-hop any", "multi-hop all", "updated", "overall")
DEPTH = 10


def _rank(ranking: Sequence[str], group: frozenset[str]) -> int | None:
    return next((i + 1 for i, key in enumerate(ranking[:DEPTH]) if key in group), None)


def ranks(question: Question, ranking: Sequence[str]) -> tuple[int | None, int | None]:
    """(rank of the first gold item, rank at which every gold group is covered)."""
    per_group = [_rank(ranking, group) for group in question.gold]
    found = [r for r in per_group if r is not None]
    first = min(found) if found else None
    last = max(found) if len(found) == len(per_group) else None
    return first, last


@dataclass(frozen=True)
class Score:
    r5: float
    r10: float
    mrr: float
    n: int


def _score(rank_list: Sequence[int | None]) -> Score:
    n = len(rank_list) or 1
    return Score(
        sum(1 for r in rank_list if r is not None and r <= 5) / n,
        sum(1 for r in rank_list if r is not None and r <= 10) / n,
        sum(1 / r for r in rank_list if r is not None) / n,
        len(rank_list),
    )


def score(questions: Sequence[Question], rankings: Sequence[Sequence[str]]) -> dict[str, Score]:
    by: dict[str, list[int | None]] = {c: [] for c in CATEGORIES}
    for question, ranking in zip(questions, rankings, strict=True):
        first, last = ranks(question, ranking)
        if question.category == "multi-hop":
            by["multi-hop any"].append(first)
            by["multi-hop all"].append(last)
        else:
            by[question.category].append(first)
        by["overall"].append(last)
    return {c: _score(r) for c, r in by.items()}


def latest_first(questions: Sequence[Question], rankings: Sequence[Sequence[str]]) -> float:
    """Updated questions: share where the latest statement ranks above every stale one."""
    wins = total = 0
    for question, ranking in zip(questions, rankings, strict=True):
        if question.category != "updated":
            continue
        total += 1
        latest = _rank(ranking, question.gold[0])
        stale = _rank(ranking, question.stale)
        wins += latest is not None and (stale is None or latest < stale)
    return wins / max(total, 1)


def table(rows: dict[str, dict[str, Score]], categories: Sequence[str] = CATEGORIES) -> str:
    head = "| | " + " | ".join(f"{c} R@5 | R@10 | MRR" for c in categories) + " |"
    rule = "| --- |" + " --: |" * (3 * len(categories))
    lines = [head, rule]
    for label, scores in rows.items():
        cells = [
            f"{scores[c].r5:.3f} | {scores[c].r10:.3f} | {scores[c].mrr:.3f}" for c in categories
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts_line(scores: dict[str, Score]) -> str:
    return ", ".join(f"{c}: {s.n}" for c, s in scores.items() if c != "multi-hop all")
