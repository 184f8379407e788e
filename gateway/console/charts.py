"""Bar charts as SVG geometry, computed here and drawn by the templates (no script, no library)."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT, GAP = 600, 160, 2


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float


@dataclass(frozen=True)
class Chart:
    title: str
    bars: list[Bar]
    top: float  # the value of a full-height bar
    width: int = WIDTH
    height: int = HEIGHT


def bars(labels: list[str], values: list[float], title: str) -> Chart:
    top = max(values, default=0.0) or 1.0
    step = WIDTH / max(1, len(values))
    return Chart(title, [
        Bar(n * step, HEIGHT - HEIGHT * v / top, max(1.0, step - GAP), HEIGHT * v / top, label, v)
        for n, (label, v) in enumerate(zip(labels, values, strict=True))
    ], top)  # fmt: skip
