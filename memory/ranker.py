"""Recall's ranking: a logistic model over each candidate's features.

The weights are fitted, not hand-tuned: ``python -m bench.fit_ranker`` gathers the candidates
of every question of the LoCoMo dev conversations and of the synthetic set, labels the evidence
turns, validates leave-one-conversation-out and writes ``memory/data/ranker.json``. The gateway
loads that file at start (``Ranker.load``); a missing or corrupt file stops the start with a
clear error rather than failing the first request. Scoring is a dot product: no dependency
beyond the standard library at run time (numpy only to fit).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).with_name("data") / "ranker.json"
FEATURES = (
    "sim", "sim_gap", "vector_rr", "bm25", "bm25_context", "lexical_rr", "entity_rr", "names",
    "speaker", "mentioned", "date", "when_time", "neighbour_sim", "neighbour_lexical", "session",
    "session_rr", "length", "recency", "widened", "sim_pool_rr", "lexical_pool_rr", "coverage",
    "coverage_context",
)  # fmt: skip


class RankerError(RuntimeError):
    """The weights file cannot be used: the gateway refuses to start with it."""


@dataclass(frozen=True)
class Ranker:
    weights: dict[str, float]
    bias: float
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Ranker:
        path = path or DEFAULT_PATH
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise RankerError(f"recall ranker weights not found: {path}") from exc
        except (OSError, ValueError) as exc:
            raise RankerError(f"recall ranker weights unreadable ({path}): {exc}") from exc
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Any, source: str = "ranker") -> Ranker:
        if not isinstance(raw, dict) or not isinstance(raw.get("weights"), dict):
            raise RankerError(f"{source}: expected an object with a 'weights' object")
        weights = raw["weights"]
        missing = [f for f in FEATURES if f not in weights]
        if missing:
            raise RankerError(f"{source}: no weight for {', '.join(missing)}")
        values = [*(weights[f] for f in FEATURES), raw.get("bias", 0.0)]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise RankerError(f"{source}: every weight and the bias must be a finite number")
        meta: dict[str, Any] = raw["meta"] if isinstance(raw.get("meta"), dict) else {}
        return cls({f: float(weights[f]) for f in FEATURES}, float(values[-1]), meta)

    def score(self, features: Mapping[str, float]) -> float:
        """The model's probability that this candidate is what the query asks for (0-1)."""
        logit = self.bias + sum(w * features.get(f, 0.0) for f, w in self.weights.items())
        return 1 / (1 + math.exp(-max(min(logit, 30.0), -30.0)))

    def save(self, path: Path) -> None:
        body = {"weights": {f: round(w, 6) for f, w in self.weights.items()},
                "bias": round(self.bias, 6), "meta": self.meta}  # fmt: skip
        path.write_text(json.dumps(body, indent=1) + "\n")


def fit(
    rows: Sequence[Sequence[float]], labels: Sequence[int], *, l2: float = 1.0, rounds: int = 30
) -> tuple[list[float], float]:
    """Logistic regression by Newton steps (IRLS), L2 on the weights; returns (weights, bias).

    Positives are up-weighted to balance the classes: the model ranks, so only the order of its
    scores matters, and a balanced fit keeps the rare evidence turns from being ignored.
    """
    import numpy as np

    x = np.hstack([np.asarray(rows, dtype=np.float64), np.ones((len(rows), 1))])
    y = np.asarray(labels, dtype=np.float64)
    pos = max(float(y.sum()), 1.0)
    sample = np.where(y > 0, (len(y) - pos) / pos, 1.0)
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(rounds):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (sample * (p - y)) + penalty * w
        hess = (x * (sample * p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-6:
            break
    return [float(v) for v in w[:-1]], float(w[-1])


def fit_lists(
    lists: Sequence[tuple[Sequence[Sequence[float]], Sequence[int]]],
    list_weights: Sequence[float],
    *,
    l2: float = 1e-3,
    steps: int = 400,
) -> tuple[list[float], float]:
    """Listwise fit: per query, the softmax over its candidates puts its mass on the evidence.

    What recall@k rewards is the order within one query's candidates, so that is what the loss
    sees (a pointwise fit also spends itself on telling queries apart). Features are
    standardised for the descent and the weights mapped back, so scoring stays a dot product;
    a final one-feature logistic fit turns the score into a probability. Returns
    (weights, bias).
    """
    import numpy as np

    usable = [
        (np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), w)
        for (x, y), w in zip(lists, list_weights, strict=True)
        if sum(y) and len(y) > 1
    ]
    x = np.vstack([u[0] for u in usable])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / std
    starts = np.cumsum([0] + [len(u[1]) for u in usable])[:-1]
    target = np.concatenate([u[1] / u[1].sum() for u in usable])
    weight = np.asarray([u[2] for u in usable])
    weight = weight / weight.sum()
    row_weight = np.repeat(weight, [len(u[1]) for u in usable])
    w = np.zeros(x.shape[1])
    m, v = np.zeros_like(w), np.zeros_like(w)
    for step in range(1, steps + 1):
        logits = z @ w
        top = np.maximum.reduceat(logits, starts)
        exp = np.exp(logits - np.repeat(top, np.diff(np.append(starts, len(logits)))))
        prob = exp / np.repeat(
            np.add.reduceat(exp, starts), np.diff(np.append(starts, len(logits)))
        )
        grad = z.T @ (row_weight * (prob - target)) + l2 * w
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        w -= 0.05 * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    raw = w / std
    logits = x @ raw
    labels = np.concatenate([u[1] > 0 for u in usable]).astype(int)
    (scale,), bias = fit(logits[:, None].tolist(), labels.tolist(), l2=0.0)
    return [float(c) for c in raw * scale], bias
