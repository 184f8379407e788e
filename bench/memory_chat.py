"""Memory-on chat throughput: the gateway on one core, ``X-Memory: on``, new messages each time.

    python -m bench.memory_chat                 # c=16, 10 s after 3 s warm-up
    python -m bench.memory_chat --conc 1,16 --duration 15 --seed-items 20000

Reuses ``make bench``'s pieces (``bench/run.py``, ``bench/targets.py``): the shared zero-delay mock
upstream (``../shared/bench/mock_upstream.py``, model ``mock-gpt``) on CPU 0 with wrk, the gateway
alone on CPU 1, a fresh embedded PostgreSQL + Redis. The shared ``bench.py`` sends one fixed body,
and a fixed message would be recalled from the query-embedding cache, so this drives wrk with its
own Lua script: every request a different user message (and one of 100 end users), so every
request embeds its query, searches, injects, forwards and saves the turn. Before the load the
workspace is seeded with memory to recall (COPY, ``bench/synthetic_items.py``: real text,
synthetic vectors). No RQ worker runs during the measurement (it would compete for the two
cores); saved turns wait in the outbox/queue, as they would behind a busy worker.
Results: stdout and ``bench-results/memory-chat.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bench import hotspots, synthetic_items, targets
from bench.processes import (
    OutsideLoad,
    Service,
    free_port,
    stop_on_signals,
    tree_cpu_seconds,
    wait_http,
    wait_quiet,
)
from bench.run import BENCH_PYTHON, _shared_dir
from bench.scenarios import Scenario

ROOT = Path(__file__).resolve().parents[1]
TARGET_RPS = 100  # issue #11: memory-on chat >= 100 req/s at c=16
SCENARIO = Scenario("memory-on", "recall + inject + save every turn", headers={"X-Memory": "on"})
_LUA = r"""
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.headers["X-Memory"] = "%(memory)s"
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n - 1) %% #bodies + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"errors":%%d,"non2xx":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    e.status, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    stop_on_signals()  # SIGTERM unwinds too: the gateway and its services are stopped
    shared = _shared_dir()
    if shutil.which("wrk") is None or not BENCH_PYTHON.exists():
        subprocess.run(["bash", str(shared / "bench" / "setup.sh")], check=True)
    run_dir = args.results_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-memory-chat"
    logs = run_dir / "logs"
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    texts = synthetic_items.Texts(seed=11)
    with (
        tempfile.TemporaryDirectory(prefix="cmg-memchat-") as tmp,
        targets.mock_upstream(shared, BENCH_PYTHON, logs) as direct,
        _gateway(direct.base_url, logs, args, texts, notes) as (url, key, pid),
    ):
        bodies = Path(tmp) / "bodies.jsonl"
        _bodies(bodies, texts, args.requests)
        for memory in ("on", "off"):
            lua = Path(tmp) / f"memory-{memory}.lua"
            lua.write_text(_LUA % {"bodies": bodies, "key": key, "memory": memory})
            _wrk(url, lua, max(args.conc), args.warmup)  # warm-up (its messages are used up)
            for conc in args.conc:
                wait_quiet(0.3, 60)
                rows.append(_point(url, lua, conc, args.duration, pid, direct.pid, memory))
            if args.profile and memory == "on":  # an extra, unmeasured run: sampling slows it
                profile = run_dir / "profile-memory-on.txt"
                with _profiled(pid, args.duration, profile):
                    _wrk(url, lua, max(args.conc), args.duration)
                if profile.exists():
                    notes.append("\n\n" + hotspots.summarize(profile, "memory on"))
    table = render(rows, notes, args)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "table.md").write_text(table)
    (args.results_dir / "memory-chat.md").write_text(table)
    print("\n" + table, flush=True)


@contextlib.contextmanager
def _gateway(
    upstream: str, logs: Path, args: argparse.Namespace, texts: synthetic_items.Texts,
    notes: list[str],
) -> Iterator[tuple[str, str, int]]:  # fmt: skip
    """``targets.gateway``'s set-up, plus memory to recall in the bench workspace before start."""
    from gateway.ops import local_services

    data_dir = Path(tempfile.mkdtemp(prefix="cmg-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, data_dir, True)
        stack.callback(targets._stop_embedded, data_dir)
        env = targets._gateway_env(SCENARIO, upstream)
        if args.candidates:
            env["CMG_MEMORY_CANDIDATES"] = str(args.candidates)
            notes.append(f"gateway run with CMG_MEMORY_CANDIDATES={args.candidates}")
        env["DATABASE_URL"] = local_services.start_postgres(data_dir).url
        env["REDIS_URL"] = local_services.start_redis(data_dir).url
        key = targets._prepare(env, logs / "gateway-setup.log")
        notes.append(_seed(env["DATABASE_URL"], args.seed_items, texts))
        port = free_port()
        argv: list[str | Path] = [
            targets._cmg(),
            "serve",
            *f"--host 127.0.0.1 --port {port}".split(),
        ]
        server = Service("gateway", argv, log=logs / "gateway.log", cpu=targets.PROXY_CPU, env=env)
        stack.callback(server.stop)
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{url}/models", server, headers={"Authorization": f"Bearer {key}"})
        yield url, key, server.pid


@contextlib.contextmanager
def _profiled(pid: int, seconds: int, out: Path | None) -> Iterator[None]:
    """py-spy (from the bench venv, never the project's) samples the gateway meanwhile."""
    if out is None:
        yield
        return
    py_spy = hotspots.ensure_py_spy(BENCH_PYTHON)
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = [str(py_spy), "record", "--nonblocking", "-p", str(pid), "-r", "250", "-d", str(seconds)]
    sampler = subprocess.Popen([*spy, "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield
    finally:
        try:
            sampler.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait()


def _seed(database_url: str, count: int, texts: synthetic_items.Texts) -> str:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT id FROM workspaces WHERE name = 'bench'").fetchone()
        assert row is not None
        seconds = synthetic_items.load(conn, str(row[0]), count, texts, users=100, seed=count)
        conn.execute(synthetic_items.TERM_STATS, ([row[0]],))
        conn.execute("ANALYZE memory_items")
        conn.commit()
    return f"workspace seeded with {count:,} items (100 end users) by COPY in {seconds:.1f} s"


def _bodies(path: Path, texts: synthetic_items.Texts, count: int) -> None:
    """One chat body per line, each with a user message never sent before."""
    with path.open("w") as f:
        for n in range(count):
            _, said = texts.item()
            body = {
                "model": targets.MODEL,
                "messages": [{"role": "user", "content": f"{said} ({n})"}],
                "max_tokens": 16,
                "user": f"user-{n % 100:04d}",
            }
            f.write(json.dumps(body, separators=(",", ":")) + "\n")


def _wrk(url: str, lua: Path, conc: int, duration: int) -> dict[str, float]:
    cmd = ["taskset", "-c", str(targets.CLIENT_CPU), "wrk", "-t1", f"-c{conc}", f"-d{duration}s",
           "--timeout=30s", "-s", str(lua), f"{url}/chat/completions"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            parsed: dict[str, float] = json.loads(line[8:])
            return parsed
    raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")


def _point(
    url: str, lua: Path, conc: int, duration: int, pid: int, mock: int, memory: str
) -> dict[str, object]:
    cpu0, t0 = tree_cpu_seconds([pid]), time.monotonic()
    with OutsideLoad([pid, mock]) as outside:
        result = _wrk(url, lua, conc, duration)
    cpu = (tree_cpu_seconds([pid]) - cpu0) / (time.monotonic() - t0)
    rps = result["requests"] / (result["duration_us"] / 1e6)
    row = {
        "memory": memory, "conc": conc, "rps": rps, "p50": result["p50_us"] / 1000,
        "p90": result["p90_us"] / 1000, "p99": result["p99_us"] / 1000,
        "errors": int(result["errors"]), "non2xx": int(result["non2xx"]),
        "cpu": cpu, "outside": outside.cores,
    }  # fmt: skip
    print(f"  memory {memory} c={conc}: {rps:,.0f} req/s, p50 {row['p50']:.1f} ms, "
          f"errors {row['errors']}, gateway CPU {cpu:.2f}", flush=True)  # fmt: skip
    return row


def render(rows: list[dict[str, object]], notes: list[str], args: argparse.Namespace) -> str:
    lines = [
        "## Memory-on chat throughput (gateway on one core)",
        "",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; gateway alone on CPU "
        f"{targets.PROXY_CPU}; shared zero-delay mock + wrk on CPU {targets.CLIENT_CPU}; "
        "PostgreSQL and Redis unpinned",
        f"- wrk closed loop, {args.duration} s per point after {args.warmup} s warm-up; JSON "
        "chat, 16-token answers; a new user message every request (one of 100 end users), so "
        "no query-embedding cache hits; each request recalls, injects, forwards and saves the turn",
        "- `X-Memory: off` rows: the same bodies through the same gateway, for reference",
        *(f"- {n}" for n in notes if not n.startswith("\n")),
        "",
        "| X-Memory | conc | req/s | p50 ms | p90 ms | p99 ms | errors | gateway CPU cores "
        "| other load cores |",
        "| --- | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['memory']} | {r['conc']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p90']:.2f} | "
            f"{r['p99']:.2f} | {r['errors']} | {r['cpu']:.2f} | {r['outside']:.2f} |"
        )
    on16 = [r for r in rows if r["memory"] == "on" and r["conc"] == 16]
    if on16:
        rps = float(on16[0]["rps"])  # type: ignore[arg-type]
        verdict = "met" if rps >= TARGET_RPS else "MISSED"
        lines += [
            "",
            f"Goal: memory-on JSON req/s at c=16 >= {TARGET_RPS}: {rps:,.0f} -> {verdict}",
        ]
    lines += [n for n in notes if n.startswith("\n")]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_chat", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--conc", type=lambda s: [int(x) for x in s.split(",")], default=[16])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed-items", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30_000, help="distinct bodies (30000)")
    parser.add_argument("--candidates", type=int, help="CMG_MEMORY_CANDIDATES (default: 50)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the gateway at memory on, top conc")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench-results")
    return parser


if __name__ == "__main__":
    main()
