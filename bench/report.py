"""The bench's JSON lines → Markdown: one summary row per target, the gateway's goals, details.

Rows come from ``../shared/bench/bench.py`` (``label, mode, concurrency, rps, p50_ms, ...,
proc_cpu_cores, proc_peak_rss_mb, box_busy_cores``; ``mode`` is ``chat`` (JSON), ``stream``
(SSE, latency to the end of the stream) or ``ttft``), plus ``target``, ``scenario`` and ``attempt``
added by ``bench.harness``. Where a point was measured more than once, the attempt the rest of
the machine disturbed least is quoted.

    python -m bench.report bench-results/<run>/results.jsonl
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import OUTSIDE_LIMIT, Row, best

ORDER = ("direct", "gateway", "litellm")
_MODES = {"chat": "JSON", "stream": "SSE", "ttft": "TTFT"}
SSE_CONC = 16


@dataclass(frozen=True)
class Goal:
    what: str
    limit: float
    at_least: bool  # True: the figure must be >= limit; False: <= limit

    def met(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit


# The gateway on one core, zero-delay mock (memory off).
GOALS = {
    "json_c16": Goal("JSON req/s at c=16", 1500, True),
    "sse_c16": Goal("SSE req/s at c=16", 800, True),
    "added_p50": Goal("added p50 at c=1 (ms)", 1.0, False),
}


def render(
    rows: Sequence[Row], notes: Sequence[str] = (), outside_limit: float | None = None
) -> str:
    points = _points(rows)
    if outside_limit is not None:
        notes = [*notes, *_disturbed(points, outside_limit)]
    concs = sorted({c for (_, mode, c) in points if mode == "chat"})
    parts = [
        "## Gateway bench",
        "\n".join(f"- {note}" for note in notes),
        _summary(points, concs),
        _goals(points, outside_limit),
        "### Every point",
        _details(points, rows),
    ]
    ttft = _ttft(points)
    if ttft:
        parts += ["### Time to first token (streaming, c=1, httpx probe)", ttft]
    return "\n\n".join(p for p in parts if p) + "\n"


def _points(rows: Sequence[Row]) -> dict[tuple[str, str, int], Row]:
    by_target: dict[str, list[Row]] = {}
    for row in rows:
        by_target.setdefault(_target(row), []).append(row)
    return {
        (target, mode, conc): row
        for target, target_rows in by_target.items()
        for (mode, conc), row in best(target_rows).items()
    }


def _disturbed(points: dict[tuple[str, str, int], Row], limit: float) -> list[str]:
    """One note naming the points that other work still disturbed on their best attempt."""
    hit = [
        f"{target} {_MODES.get(mode, mode)} c={conc} ({row['outside_cores']:.2f})"
        for (target, mode, conc), row in points.items()
        if _outside(row) > limit
    ]
    if not hit:
        return []
    return [
        f"**disturbed** (other work above {limit} cores on the best attempt; rerun before "
        f"quoting): {', '.join(hit)}"
    ]


def _outside(row: Row) -> float:
    value = row.get("outside_cores")
    return float(value) if isinstance(value, int | float) else 0.0


def _targets(points: dict[tuple[str, str, int], Row]) -> list[str]:
    names = {t for (t, _, _) in points}
    return [t for t in ORDER if t in names] + sorted(names - set(ORDER))


def _summary(points: dict[tuple[str, str, int], Row], concs: list[int]) -> str:
    if not concs:
        return "_no JSON points measured_"
    low, high = concs[0], concs[-1]
    sse = SSE_CONC if any(k[1:] == ("stream", SSE_CONC) for k in points) else high
    head = [f"JSON req/s c={c}" for c in concs] + [f"SSE req/s c={sse}", f"p50 ms c={low}"]
    head += [f"added p50 ms c={low}", f"proxy CPU cores (JSON c={high})", "peak RSS MB"]
    head += ["TTFT p50 ms", "errors", "max other load cores"]
    lines = [_row(["target", *head]), _row(["---"] + ["--:"] * len(head))]
    direct = points.get(("direct", "chat", low))
    for target in _targets(points):
        get = _getter(points, target)
        mine = [r for k, r in points.items() if k[0] == target]
        load = [r for r in mine if r["mode"] != "ttft"]
        p50 = get("chat", low, "p50_ms")
        added = (
            p50 - direct["p50_ms"] if direct and p50 is not None and target != "direct" else None
        )
        cpu = get("chat", high, "proc_cpu_cores")
        cells = [_num(get("chat", c, "rps")) for c in concs] + [_num(get("stream", sse, "rps"))]
        cells += [_ms(p50), _ms(added, signed=True)]
        cells += [f"{cpu:.2f} (mock)" if target == "direct" and cpu is not None else _ms(cpu)]
        rss = [r["proc_peak_rss_mb"] for r in load if "proc_peak_rss_mb" in r]
        cells += [f"{max(rss):.0f}" if rss and target != "direct" else "—"]
        cells += [_ms(get("ttft", 1, "ttft_p50_ms"))]
        cells += [str(sum(r.get("errors", 0) for r in mine))]
        cells += [f"{max(r.get('outside_cores', 0) for r in mine):.2f}" if mine else "—"]
        lines.append(_row([target, *cells]))
    return "\n".join(lines)


def _goals(points: dict[tuple[str, str, int], Row], limit: float | None) -> str:
    if not any(t == "gateway" for (t, _, _) in points):
        return ""
    get = _getter(points, "gateway")
    direct = _getter(points, "direct")("chat", 1, "p50_ms")
    p50 = get("chat", 1, "p50_ms")
    values = {
        "json_c16": get("chat", 16, "rps"),
        "sse_c16": get("stream", 16, "rps"),
        "added_p50": p50 - direct if p50 is not None and direct is not None else None,
    }
    sources = {
        "json_c16": [("gateway", "chat", 16)],
        "sse_c16": [("gateway", "stream", 16)],
        "added_p50": [("gateway", "chat", 1), ("direct", "chat", 1)],
    }
    lines = ["Gateway goals (one core):"]
    for name, goal in GOALS.items():
        value = values[name]
        bound = f"{'≥' if goal.at_least else '≤'} {goal.limit:g}"
        if value is None:
            lines.append(f"- {goal.what} {bound}: not measured")
        else:
            verdict = "met" if goal.met(value) else "**MISSED**"
            rows = [points[k] for k in sources[name] if k in points]
            if limit is not None and any(_outside(r) > limit for r in rows):
                verdict += " (disturbed: rerun on a quiet box)"
            lines.append(f"- {goal.what} {bound}: {value:,.2f} → {verdict}")
    return "\n".join(lines)


def _details(points: dict[tuple[str, str, int], Row], rows: Sequence[Row]) -> str:
    head = ["target", "mode", "conc", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"]
    head += ["proxy CPU cores", "peak RSS MB", "box busy cores", "other load cores", "attempts"]
    lines = [_row(head), _row(["---", "---"] + ["--:"] * (len(head) - 2))]
    attempts: dict[tuple[str, str, int], int] = {}
    for row in rows:
        key = (_target(row), row["mode"], row["concurrency"])
        attempts[key] = attempts.get(key, 0) + 1
    for target in _targets(points):
        for (t, mode, conc), r in sorted(points.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            if t != target or mode == "ttft":
                continue
            cells = [t, _MODES[mode], str(conc), _num(r["rps"])]
            cells += [_ms(r["p50_ms"]), _ms(r["p90_ms"]), _ms(r["p99_ms"]), str(r["errors"])]
            cells += [_ms(r.get("proc_cpu_cores")), _num(r.get("proc_peak_rss_mb"))]
            cells += [_ms(r.get("box_busy_cores")), _ms(r.get("outside_cores"))]
            cells += [str(attempts[(t, mode, conc)])]
            lines.append(_row(cells))
    return "\n".join(lines)


def _ttft(points: dict[tuple[str, str, int], Row]) -> str:
    rows = [(t, r) for (t, mode, _), r in points.items() if mode == "ttft"]
    if not rows:
        return ""
    head = ["target", "TTFT p50 ms", "TTFT p99 ms", "full stream p50 ms", "SSE events", "errors"]
    head += ["other load cores"]
    lines = [_row(head), _row(["---"] + ["--:"] * (len(head) - 1))]
    order = _targets(points)
    for t, r in sorted(rows, key=lambda tr: order.index(tr[0])):
        cells = [t, _ms(r["ttft_p50_ms"]), _ms(r["ttft_p99_ms"]), _ms(r["total_p50_ms"])]
        cells += [f"{r['sse_events_median']:g}", str(r["errors"]), _ms(r.get("outside_cores"))]
        lines.append(_row(cells))
    return "\n".join(lines)


def _getter(
    points: dict[tuple[str, str, int], Row], target: str
) -> Callable[[str, int, str], float | None]:
    def get(mode: str, conc: int, field: str) -> float | None:
        row = points.get((target, mode, conc))
        value = row.get(field) if row else None
        return float(value) if isinstance(value, int | float) else None

    return get


def _target(row: Row) -> str:
    return str(row.get("target") or row["label"])


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _ms(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def load(paths: Sequence[Path]) -> list[Row]:
    return [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        raise SystemExit("usage: python -m bench.report RESULTS.jsonl [...]")
    sys.stdout.write(render(load(paths), outside_limit=OUTSIDE_LIMIT))


if __name__ == "__main__":
    main()
