"""The other patterns that read user text stay linear: the extractive summary's sentence,
name, date and intent patterns (workers.summary) and the lexical leg's tsvector parsing
(memory.recall). CPU time at n vs 8n on hostile runs, never a clock bound."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from memory.recall import _term_freqs
from workers.summary import Message, extractive

_UNITS = ("a", " ", "a ", ". ", "\n", "Jan", "my", "A a", "1.", "'", "''")


def _ratio(work: Callable[[int], object], n: int = 16_384) -> float:
    def cpu(size: int) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            work(size)
            best = min(best, time.process_time() - started)
        return best

    ratios = []
    for _ in range(3):  # noise only inflates a ratio: retry before failing
        ratios.append(cpu(8 * n) / max(cpu(n), 2e-4))
        if ratios[-1] < 32:  # ~8x when linear, ~64x when quadratic
            break
    return min(ratios)


def _fill(unit: str, n: int) -> str:
    return (unit * (n // len(unit) + 1))[:n]


@pytest.mark.parametrize("unit", _UNITS)
def test_extractive_summary_is_linear_on_hostile_runs(unit: str) -> None:
    def work(n: int) -> object:
        message = Message(uuid.uuid4(), "user", _fill(unit, n), datetime.now(UTC), 0)
        return extractive(None, [message])

    assert _ratio(work) < 32


@pytest.mark.parametrize("unit", _UNITS)
def test_tsvector_parsing_is_linear_on_hostile_runs(unit: str) -> None:
    assert _ratio(lambda n: _term_freqs(_fill(unit, n))) < 32
