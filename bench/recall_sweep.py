"""The recall eval's sweep: the fusion constants of ``memory.recall`` tried in-process.

The gateway under test runs in another process, so the sweep calls ``memory.recall.search``
itself, on the same database, with the same embedder and ``DocCounts`` the gateway uses, after
setting ``memory.recall.RRF_K``, ``W_LEXICAL``, ``W_VECTOR`` and ``_COMMON_FRACTION`` (lexemes in
more than that share of the workspace's documents are left out of the lexical query). Each
leg's candidates depend only on (persona, query, depth, fraction), so the legs are fetched once
per question and then served from a cache while the fusion itself (the real ``search``) runs
for every setting.

Also tried: how the query is embedded. Items are embedded as ``[date] role: content``
(``memory.embedder.document_text``); the gateway embeds the bare question.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bench import recall_score
from bench.conversations import Question
from gateway.settings import Settings
from memory import recall

RATIOS = (0.5, 1.0, 1.5, 2.0, 3.0)  # W_VECTOR with W_LEXICAL = 1
KS = (1, 5, 10, 30, 60)
FRACTIONS = (recall._COMMON_FRACTION, 0.1, 0.05, 0.02)  # the first is the current one
DEPTHS = (20, 30, 50, 100)  # candidates per leg (the gateway's CMG_MEMORY_CANDIDATES: 20)
QUERY_FORMS: dict[str, Callable[[str], str]] = {
    "bare question (now)": lambda q: q,
    "`user: ` + question": lambda q: f"user: {q}",
}
LEGS = {"vector-only": ("vector",), "full-text-only": ("lexical",), "hybrid": ("vector", "lexical")}

Setting = tuple[float, float, int, int, float]  # (w_lexical, w_vector, rrf_k, depth, fraction)
DEPTH = Settings().memory_candidates
CURRENT: Setting = (
    recall.W_LEXICAL, recall.W_VECTOR, recall.RRF_K, DEPTH, recall._COMMON_FRACTION
)  # fmt: skip
# The setting shipped before (measured at every depth too): W_VECTOR 1.5, RRF_K 10.
RECOMMENDED: Setting = (1.0, 1.5, 10, 50, 0.02)


class _Legs:
    """Caching stand-ins for ``recall.vector_leg`` / ``recall.lexical_leg``."""

    def __init__(self) -> None:
        self.vector_leg = recall.vector_leg
        self.lexical_leg = recall.lexical_leg
        self.cache: dict[tuple[Any, ...], list[recall.Hit]] = {}

    async def vector(self, conn: Any, filters: recall.Filters, vector: Any, n: int) -> Any:
        key = ("v", filters, np.asarray(vector, dtype=np.float32).tobytes(), n)
        if key not in self.cache:
            self.cache[key] = await self.vector_leg(conn, filters, vector, n)
        return [copy.copy(h) for h in self.cache[key]]

    async def lexical(self, conn: Any, filters: recall.Filters, query: str, n: int,
                      counts: recall.DocCounts) -> Any:  # fmt: skip
        key = ("l", filters, query, n, recall._COMMON_FRACTION)
        if key not in self.cache:
            self.cache[key] = await self.lexical_leg(conn, filters, query, n, counts)
        return [copy.copy(h) for h in self.cache[key]]


def run(database_url: str, workspace_id: str, questions: Sequence[Question]) -> str:
    return asyncio.run(_run(database_url, workspace_id, questions))


async def _run(database_url: str, workspace_id: str, questions: Sequence[Question]) -> str:
    from memory.db import ReadPool
    from memory.embedder import LocalMiniLM

    embedder = LocalMiniLM(threads=1)
    texts = [q.text for q in questions]
    vectors = {name: embedder.embed([form(t) for t in texts]) for name, form in QUERY_FORMS.items()}
    reads = ReadPool(database_url, pool_size=2)
    counts = recall.DocCounts(ttl=3600)
    legs = _Legs()
    saved = (recall.vector_leg, recall.lexical_leg, recall.RRF_K, recall.W_LEXICAL, recall.W_VECTOR,
             recall._COMMON_FRACTION)  # fmt: skip
    recall.vector_leg, recall.lexical_leg = legs.vector, legs.lexical  # type: ignore[assignment]

    async def rankings(setting: Setting, mode: tuple[str, ...], form: str) -> list[list[str]]:
        recall.W_LEXICAL, recall.W_VECTOR, recall.RRF_K, depth, recall._COMMON_FRACTION = setting
        out = []
        async with reads.connection() as conn:
            for q, vector in zip(questions, vectors[form], strict=True):
                hits = await recall.search(
                    conn, recall.Filters(workspace_id, q.user), q.text, vector.tolist(),
                    limit=10, candidates=depth, min_similarity=-1.0, counts=counts, legs=mode,
                )  # fmt: skip
                out.append([str(h.metadata.get("key")) for h in hits])
        return out

    try:
        return await _report(questions, rankings)
    finally:
        recall.vector_leg, recall.lexical_leg = saved[0], saved[1]  # type: ignore[assignment]
        recall.RRF_K, recall.W_LEXICAL, recall.W_VECTOR = saved[2], saved[3], saved[4]
        recall._COMMON_FRACTION = saved[5]
        await reads.close()


async def _report(questions: Sequence[Question], rankings: Any) -> str:
    score = recall_score.score
    bare = next(iter(QUERY_FORMS))
    grid: dict[Setting, dict[str, recall_score.Score]] = {}
    for fraction, k, ratio in itertools.product(FRACTIONS, KS, RATIOS):
        setting = (1.0, ratio, k, 50, fraction)
        grid[setting] = score(questions, await rankings(setting, LEGS["hybrid"], bare))
    legs = {
        f"{label}, {_label(CURRENT, weights=False)}": score(
            questions, await rankings(CURRENT, mode, bare)
        )
        for label, mode in LEGS.items()
        if label != "hybrid"
    }
    best = max(grid, key=lambda s: _objective(grid[s]))
    weights_only = max((s for s in grid if s[4] == CURRENT[4]), key=lambda s: _objective(grid[s]))
    for base in (CURRENT, RECOMMENDED, best, weights_only):
        for depth in DEPTHS:
            setting = (*base[:3], depth, base[4])
            if setting not in grid:
                grid[setting] = score(questions, await rankings(setting, LEGS["hybrid"], bare))
    lexical = {
        f"full-text-only, _COMMON_FRACTION={f:g}": score(
            questions, await rankings((*CURRENT[:4], f), LEGS["full-text-only"], bare)
        )
        for f in FRACTIONS[1:]
    }
    forms = {}
    for name in QUERY_FORMS:
        forms[f"vector-only, query {name}"] = score(
            questions, await rankings(CURRENT, LEGS["vector-only"], name)
        )
        forms[f"hybrid {_label(best)}, query {name}"] = score(
            questions, await rankings(best, LEGS["hybrid"], name)
        )
    return _render(grid, {**legs, **lexical}, (best, weights_only), forms)


def _objective(s: dict[str, recall_score.Score]) -> tuple[float, float]:
    overall = s["overall"]
    return (overall.r5 + overall.r10 + overall.mrr, overall.mrr)


def _label(s: Setting, *, weights: bool = True) -> str:
    tail = f"depth={s[3]} _COMMON_FRACTION={s[4]:g}"
    return f"W_LEXICAL={s[0]:g} W_VECTOR={s[1]:g} RRF_K={s[2]} {tail}" if weights else tail


def _render(
    grid: dict[Setting, dict[str, recall_score.Score]],
    legs: dict[str, dict[str, recall_score.Score]],
    bests: tuple[Setting, Setting],
    forms: dict[str, dict[str, recall_score.Score]],
) -> str:
    best, weights_only = bests
    ranked = sorted(grid, key=lambda s: _objective(grid[s]), reverse=True)
    rows = {**legs, f"hybrid {_label(CURRENT)} (current)": grid[CURRENT]}
    rows[f"hybrid {_label(weights_only)} (best, fraction unchanged)"] = grid[weights_only]
    rows[f"hybrid {_label(RECOMMENDED)} (shipped before)"] = grid[RECOMMENDED]
    rows[f"hybrid {_label((*RECOMMENDED[:3], 20, RECOMMENDED[4]))} (shipped before, depth 20)"] = (
        grid[(*RECOMMENDED[:3], 20, RECOMMENDED[4])]
    )
    shown = {CURRENT, weights_only, RECOMMENDED}
    top = [s for s in ranked if s[3] == 50 and s not in shown][:5]
    rows |= {f"hybrid {_label(s)}": grid[s] for s in top}
    lines = [
        "## Fusion sweep (in-process `memory.recall.search`, same database)",
        "",
        f"{len(grid)} settings: W_VECTOR/W_LEXICAL in {RATIOS}, RRF_K in {KS}, _COMMON_FRACTION "
        f"in {FRACTIONS} at 50 candidates per leg, then depths {DEPTHS} at the best. Ranked by "
        "overall R@5 + R@10 + MRR. The legs, the current setting, the best one with the current "
        "_COMMON_FRACTION, and the best:",
        "",
        recall_score.table(rows),
        "",
    ]
    for fraction in FRACTIONS[:2] + FRACTIONS[-1:]:
        lines += [
            f"Overall R@5 / MRR by W_VECTOR (rows, W_LEXICAL = 1) and RRF_K (columns), depth 50, "
            f"_COMMON_FRACTION={fraction:g}:",
            "",
            "| W_VECTOR | " + " | ".join(f"K={k}" for k in KS) + " |",
            "| --: |" + " --: |" * len(KS),
        ]
        for ratio in RATIOS:
            overall = [grid[(1.0, ratio, k, 50, fraction)]["overall"] for k in KS]
            cells = [f"{s.r5:.3f} / {s.mrr:.3f}" for s in overall]
            lines.append(f"| {ratio:g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Overall by depth (candidates per leg):",
        "",
        "| setting | depth | R@5 | R@10 | MRR |",
        "| --- | --: | --: | --: | --: |",
    ]
    bases = {(*s[:3], s[4]): s for s in (CURRENT, RECOMMENDED, best, weights_only)}
    for base in bases.values():  # each weighting once, at every depth
        for depth in DEPTHS:
            s = grid[(*base[:3], depth, base[4])]["overall"]
            lines.append(
                f"| {_label(base).split(' depth')[0]} _COMMON_FRACTION={base[4]:g} | {depth} | "
                f"{s.r5:.3f} | {s.r10:.3f} | {s.mrr:.3f} |"
            )
    lines += ["", "How the query is embedded:", "", recall_score.table(forms), ""]
    lines.append(f"**Best with the current _COMMON_FRACTION: {_label(weights_only)}**  ")
    lines.append(f"**Best overall: {_label(best)}**  ")
    lines.append(f"**Shipped before: {_label(RECOMMENDED)}**")
    return "\n".join(lines) + "\n"
