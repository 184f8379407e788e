"""One target under load: ``../shared/bench/bench.py`` (wrk, closed loop) run the way
``run_proxy.sh`` runs it, one point (mode, concurrency) at a time, so that each point can be
checked for company and measured again.

Other work on this 2-core box (someone's test suite) skews every figure. Around each point the
harness takes the machine's CPU time less what the bench's own processes used (the target with
its database and Redis, the mock, bench.py and its wrk): ``outside_cores``. A point above
``outside_limit`` is measured again, up to ``reruns`` times; every attempt is kept in the JSON
lines and the report quotes the least disturbed one. bench.py's own ``box_busy_cores``
(everything, the bench included) is kept too.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import OutsideLoad, wait_quiet
from bench.targets import CLIENT_CPU, MODEL, Target

Row = dict[str, Any]
OUTSIDE_LIMIT = 0.15  # cores of other work above which a point is measured again
TTFT = ("ttft", 1)  # bench.py's httpx probe: streaming, one connection


@dataclass(frozen=True)
class Load:
    concurrency: tuple[int, ...]
    duration: int  # seconds per point
    warmup: int  # seconds of load at the point's concurrency before it is measured
    modes: tuple[str, ...] = ("chat", "stream")
    ttft_requests: int = 400  # 0: no time-to-first-token probe

    def points(self) -> list[tuple[str, int]]:
        points = [(mode, conc) for mode in self.modes for conc in self.concurrency]
        return points + ([TTFT] if self.ttft_requests > 0 else [])


@dataclass(frozen=True)
class Harness:
    bench_py: Path
    python: Path  # the bench venv: uvloop for the mock, httpx for the TTFT probe
    load: Load
    results: Path  # JSON lines, appended
    run_id: str
    scenario: str
    outside_limit: float
    reruns: int
    quiet_limit: float = 0.3
    quiet_wait: float = 120.0

    def measure(self, target: Target, helpers: Sequence[int] = ()) -> list[Row]:
        """Every point of the load against ``target``; ``helpers``: the bench's other processes
        (the mock) whose CPU is not outside load."""
        rows: list[Row] = []
        for n, point in enumerate(self.load.points()):
            for attempt in range(1, self.reruns + 2):
                self._settle()
                row = self._point(target, point, helpers, attempt, sanity=n == 0 and attempt == 1)
                rows.append(row)
                if row["outside_cores"] <= self.outside_limit:
                    break
                if attempt <= self.reruns:
                    print(
                        f"  {target.label} {point[0]} c={point[1]}: other load took "
                        f"{row['outside_cores']:.2f} cores, measuring again",
                        flush=True,
                    )
        return rows

    def _settle(self) -> None:
        busy = wait_quiet(self.quiet_limit, self.quiet_wait)
        if busy > self.quiet_limit:
            print(f"  measuring anyway: the box stays busy ({busy:.2f} cores)", flush=True)

    def _point(
        self,
        target: Target,
        point: tuple[str, int],
        helpers: Sequence[int],
        attempt: int,
        *,
        sanity: bool,
    ) -> Row:
        with tempfile.TemporaryDirectory(prefix="cmg-bench-out-") as tmp:
            out = Path(tmp) / "rows.jsonl"
            argv = self._argv(target, point, out, sanity=sanity)
            with OutsideLoad([target.pid, *target.services, *helpers]) as outside:
                done = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"bench.py against {target.label} exited {done.returncode}")
            (row,) = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
            assert isinstance(row, dict)
        row.update(
            target=target.label,
            scenario=self.scenario,
            run_id=self.run_id,
            attempt=attempt,
            outside_cores=outside.cores,
        )
        print(f"{'':>12}other load {outside.cores:.2f} cores", flush=True)
        with self.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def _argv(
        self, target: Target, point: tuple[str, int], out: Path, *, sanity: bool
    ) -> list[str]:
        mode, conc = point
        argv = [str(self.python), str(self.bench_py), "--base-url", target.base_url]
        argv += ["--api-key", target.api_key, "--label", target.label, "--model", MODEL]
        argv += ["--wrk-cpu", str(CLIENT_CPU), "--pid", str(target.pid), "--out", str(out)]
        if point == TTFT:
            argv += ["--modes=", "--ttft", "--ttft-requests", str(self.load.ttft_requests)]
        else:
            argv += ["--modes", mode, "--concurrency", str(conc)]
            argv += ["--duration", str(self.load.duration), "--warmup", str(self.load.warmup)]
        if not sanity:
            argv.append("--no-sanity")
        for name, value in target.headers.items():
            argv += ["--header", f"{name}: {value}"]
        return argv


def best(rows: Sequence[Row]) -> dict[tuple[str, int], Row]:
    """Per (mode, concurrency) point, the attempt the rest of the machine disturbed least."""
    points: dict[tuple[str, int], Row] = {}
    for row in rows:
        key = (row["mode"], row["concurrency"])
        held = points.get(key)
        if held is None or _disturbance(row) < _disturbance(held):
            points[key] = row
    return points


def _disturbance(row: Row) -> float:
    value = row.get("outside_cores", row.get("box_busy_cores"))
    return float(value) if isinstance(value, int | float) else 0.0
