"""Where the gateway's one core goes: py-spy samples it while the harness loads it.

``python -m bench.run --profile`` (after the measured points) records the gateway at JSON and
SSE c=16 with py-spy (installed into the bench venv, never the project's) and writes, per mode,
the raw collapsed stacks (``profile-<mode>.txt``, flamegraph.pl input) and a summary of the
hottest functions by own time and by time including callees.
"""

from __future__ import annotations

import collections
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.targets import CLIENT_CPU, MODEL, Target

_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>.*?):\d+\)$")
_NOISE = re.compile(r".*/(site-packages|lib/python3\.\d+)/|.*/work/main/")
# Leaves of threads that wait (a thread pool's idle workers): not time spent on the core.
_IDLE = frozenset({"_worker (concurrent/futures/thread.py)", "wait (threading.py)"})


@dataclass
class Request:
    seconds: int
    run_dir: Path
    summary: str = ""

    def run(self, python: Path, bench_py: Path, target: Target) -> None:
        py_spy = ensure_py_spy(python)
        self.summary = record(py_spy, python, bench_py, target, self.run_dir, self.seconds)


def ensure_py_spy(python: Path) -> Path:
    py_spy = python.parent / "py-spy"
    if not py_spy.exists():
        pip = [str(python), "-m", "pip", "install", "-q", "py-spy"]
        subprocess.run(pip, check=True)
    return py_spy


def record(
    py_spy: Path, python: Path, bench_py: Path, target: Target, out_dir: Path, seconds: int
) -> str:
    """Markdown: per mode, the hottest functions of the target under c=16 load."""
    parts = []
    for mode in ("chat", "stream"):
        raw = out_dir / f"profile-{mode}.txt"
        spy = [str(py_spy), "record", "-p", str(target.pid), "-r", "250", "-d", str(seconds)]
        spy += ["-f", "raw", "-o", str(raw)]
        with (out_dir / "logs" / "py-spy.log").open("a") as log:
            sampler = subprocess.Popen(spy, stdout=log, stderr=subprocess.STDOUT)
            load = [str(python), str(bench_py), "--base-url", target.base_url, "--no-sanity"]
            load += ["--api-key", target.api_key, "--model", MODEL, "--label", target.label]
            load += ["--modes", mode, "--concurrency", "16", "--warmup", "0"]
            load += ["--duration", str(seconds), "--wrk-cpu", str(CLIENT_CPU)]
            for name, value in target.headers.items():
                load += ["--header", f"{name}: {value}"]
            subprocess.run(load, stdout=subprocess.DEVNULL, check=False)
            sampler.wait(timeout=seconds + 60)
        if raw.exists():
            parts.append(summarize(raw, "JSON" if mode == "chat" else "SSE"))
    return "\n\n".join(parts)


def summarize(raw: Path, title: str, top: int = 15) -> str:
    own: collections.Counter[str] = collections.Counter()
    total_with_callees: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    samples = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(frame) for frame in stack.split(";")]
        if frames[-1][0] in _IDLE:
            idle += n
            continue
        samples += n
        own[frames[-1][0]] += n
        packages[frames[-1][1]] += n
        for name in {name for name, package in frames if package == "gateway"}:
            if not name.endswith("(gateway/ops/cli.py)"):
                total_with_callees[name] += n
    if not samples:
        return f"#### {title} c=16: no samples"

    def table(counter: collections.Counter[str], head: str) -> str:
        rows = [f"| {head} | % of samples |", "|---|--:|"]
        rows += [f"| `{name}` | {100 * n / samples:.1f} |" for name, n in counter.most_common(top)]
        return "\n".join(rows)

    return "\n\n".join(
        [
            f"#### {title} c=16: {samples} samples (`{raw.name}`; {idle} of idle threads left out)",
            table(packages, "own time by package"),
            table(own, "own time (C calls count to the caller; the loop's own: Runner.run)"),
            table(total_with_callees, "gateway functions, time including callees"),
        ]
    )


def _name(frame: str) -> tuple[str, str]:
    """('function (module path)', top-level package) of one py-spy frame."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip() or "(native)", "(native)"
    path = _NOISE.sub("", match["file"])
    return f"{match['fn']} ({path})", path.split("/")[0]
