"""``make bench``: direct-to-mock, the gateway and (when installed) LiteLLM in one run, one table.

    python -m bench.run                  # JSON + SSE at c=1,16,64, 10 s per point
    python -m bench.run --quick          # 3 s per point at c=1,16
    python -m bench.run --litellm        # installs LiteLLM first if missing (takes minutes)
    python -m bench.run --scenario memory-off --conc 1,16 --duration 15
    python -m bench.run --profile        # then py-spy the gateway at JSON and SSE c=16

Uses the shared side-by-side bench (``../shared/bench``, or ``$CMG_SHARED/bench``): its mock
upstream and ``bench.py`` (wrk), installed by its ``setup.sh`` when wrk or /tmp/bench-venv are
missing. Loopback only. Results: ``bench-results/<time>-<scenario>/`` (JSON lines, logs,
table.md) and the table again in ``bench-results/latest.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from bench import hotspots, report, targets
from bench.harness import OUTSIDE_LIMIT, Harness, Load, Row
from bench.processes import ServiceFailed, loadavg, stop_on_signals
from bench.scenarios import SCENARIOS, Scenario

ROOT = Path(__file__).resolve().parents[1]
BENCH_PYTHON = Path("/tmp/bench-venv/bin/python")  # made by setup.sh
LITELLM = Path("/tmp/litellm-venv/bin/litellm")  # made by setup.sh --litellm


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    shared = _shared_dir()
    notes: list[str] = []
    use_litellm = _ensure_tools(shared, args, notes)
    scenario = SCENARIOS[args.scenario]
    load = _load(args)
    run_dir = args.results_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario.name}"
    run_dir.mkdir(parents=True)
    harness = Harness(
        bench_py=shared / "bench" / "bench.py",
        python=BENCH_PYTHON,
        load=load,
        results=run_dir / "results.jsonl",
        run_id=run_dir.name,
        scenario=scenario.name,
        outside_limit=args.outside_limit,
        reruns=args.reruns,
        quiet_wait=args.quiet_wait,
    )
    before = loadavg()
    print(f"bench {run_dir.name}: load average {before} on {os.cpu_count()} cores", flush=True)
    stop_on_signals()
    profile = hotspots.Request(args.profile, run_dir) if args.profile else None
    rows: list[Row] = []
    complete = False
    try:
        _measure(rows, harness, shared, scenario, use_litellm, run_dir / "logs", notes, profile)
        complete = True
    finally:
        if not complete:
            notes.append("**incomplete**: the run broke off; these are the points it measured")
            if harness.results.exists():
                rows = report.load([harness.results])  # every point written so far
        if rows:
            notes[:0] = _header(scenario, load, before, run_dir)
            _write_table(rows, notes, profile, args, run_dir)


def _write_table(
    rows: list[Row],
    notes: list[str],
    profile: hotspots.Request | None,
    args: argparse.Namespace,
    run_dir: Path,
) -> None:
    table = report.render(rows, notes, args.outside_limit)
    if profile is not None and profile.summary:
        table += "\n### Where the gateway's core goes (py-spy)\n\n" + profile.summary + "\n"
    (run_dir / "table.md").write_text(table)
    (args.results_dir / "latest.md").write_text(table)
    print("\n" + table, flush=True)


def _measure(
    rows: list[Row],
    harness: Harness,
    shared: Path,
    scenario: Scenario,
    use_litellm: bool,
    logs: Path,
    notes: list[str],
    profile: hotspots.Request | None,
) -> None:
    """Every target in turn, into ``rows`` as they come (a broken-off run keeps its points)."""
    with targets.mock_upstream(shared, BENCH_PYTHON, logs) as direct:
        print("== direct to the mock", flush=True)
        rows += harness.measure(direct)
        print(f"== gateway, scenario {scenario.name}", flush=True)
        with targets.gateway(direct.base_url, scenario, logs) as gateway:
            rows += harness.measure(gateway, helpers=[direct.pid])
            if profile is not None:
                print("== profiling the gateway (py-spy)", flush=True)
                profile.run(BENCH_PYTHON, harness.bench_py, gateway)
        if use_litellm:
            version = _litellm_version()
            print(f"== LiteLLM {version}", flush=True)
            notes.append(
                f"LiteLLM {version}: ../shared/bench/configs/litellm.yaml (no DB, no callbacks, "
                "no retries), one worker"
            )
            try:
                with targets.litellm(LITELLM, shared, direct.base_url, logs) as litellm:
                    rows += harness.measure(litellm, helpers=[direct.pid])
            except ServiceFailed as exc:
                print(f"LiteLLM failed: {exc}", file=sys.stderr, flush=True)
                notes.append(f"LiteLLM did not start; see {logs / 'litellm.log'}")


def _header(scenario: Scenario, load: Load, before: str, run_dir: Path) -> list[str]:
    headers = ", ".join(f"`{k}: {v}`" for k, v in scenario.headers.items()) or "none"
    return [
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores; load average before "
        f"{before}, after {loadavg()}",
        f"scenario `{scenario.name}`: {scenario.help}; gateway request headers: {headers}",
        f"wrk closed loop, {load.duration} s per point after {load.warmup} s warm-up, "
        f"c={','.join(map(str, load.concurrency))}; zero-delay mock, 16-token answers",
        f"proxy alone on CPU {targets.PROXY_CPU}; mock, wrk and probe on CPU {targets.CLIENT_CPU}"
        " (the direct row's CPU is the mock's)",
        f"context-memory-gateway {_version('context-memory-gateway')}; raw: {run_dir}",
    ]


def _ensure_tools(shared: Path, args: argparse.Namespace, notes: list[str]) -> bool:
    """wrk and the bench venv (and LiteLLM if asked); whether LiteLLM is to be measured."""
    setup = shared / "bench" / "setup.sh"
    if shutil.which("wrk") is None or not BENCH_PYTHON.exists():
        subprocess.run(["bash", str(setup)], check=True)
    if args.no_litellm:
        return False
    if args.litellm and not LITELLM.exists():
        print("installing LiteLLM (setup.sh --litellm): this takes a few minutes", flush=True)
        done = subprocess.run(["bash", str(setup), "--litellm"], check=False)
        if done.returncode != 0 or not LITELLM.exists():
            notes.append(f"LiteLLM: `setup.sh --litellm` failed (exit {done.returncode})")
            return False
    return LITELLM.exists()


def _load(args: argparse.Namespace) -> Load:
    duration = args.duration or (3 if args.quick else 10)
    conc = args.conc or ("1,16" if args.quick else "1,16,64")
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    return Load(
        concurrency=tuple(int(c) for c in conc.split(",") if c),
        duration=duration,
        warmup=warmup,
        ttft_requests=100 if args.quick else 400,
    )


def _shared_dir() -> Path:
    env = os.environ.get("CMG_SHARED")
    shared = Path(env) if env else ROOT.parent / "shared"
    if not (shared / "bench" / "bench.py").exists():
        raise SystemExit(f"no shared bench at {shared}/bench: set CMG_SHARED")
    return shared.resolve()


def _litellm_version() -> str:
    python = LITELLM.parent / "python"
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "(version unknown)"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--duration", type=int, help="seconds per point (default 10; --quick 3)")
    parser.add_argument("--conc", help="concurrencies, e.g. 1,16,64 (default; --quick 1,16)")
    parser.add_argument(
        "--warmup", type=int, help="warm-up seconds per point (default 3; --quick 2)"
    )
    parser.add_argument("--quick", action="store_true", help="short run: 3 s per point, c=1,16")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="memory-off")
    litellm = parser.add_mutually_exclusive_group()
    litellm.add_argument(
        "--litellm", action="store_true", help="measure LiteLLM, installing it first if missing"
    )
    litellm.add_argument("--no-litellm", action="store_true", help="skip LiteLLM even if present")
    parser.add_argument(
        "--outside-limit",
        type=float,
        default=OUTSIDE_LIMIT,
        help=f"measure a point again when other work took more cores ({OUTSIDE_LIMIT})",
    )
    parser.add_argument("--reruns", type=int, default=2, help="reruns per disturbed point")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="most seconds to wait for a quiet box per point",
    )
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=10,
        default=0,
        metavar="SECONDS",
        help="py-spy the gateway at JSON and SSE c=16 after its points (default 10 s each)",
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench-results")
    return parser


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
