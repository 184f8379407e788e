"""Chat completions, Responses and Messages through the gateway, side by side in one run.

    make bench-surfaces    (python -m bench.surfaces [--duration 5] [--conc 1,16])

The shared zero-delay mock upstream, then ``cmg serve`` (memory off: the surfaces' own cost),
then for each surface (JSON and SSE) a closed-loop asyncio client at each concurrency: p50
latency and requests per second; the direct-to-mock chat row is the floor, so "added p50" is a
surface's p50 minus the direct one. The client is Python (aiohttp) in this process, the same
for every row, so the rows compare with each other, not with ``make bench``'s wrk figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import targets
from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Say hello in one short sentence."


def _bodies(stream: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    flag = {"stream": True} if stream else {}
    user = [{"role": "user", "content": PROMPT}]
    return {
        "chat": ("/chat/completions", {"model": targets.MODEL, "messages": user,
                                        "max_tokens": 16, **flag}),
        "responses": ("/responses", {"model": targets.MODEL, "input": PROMPT,
                                      "max_output_tokens": 16, "store": False, **flag}),
        "responses stored": ("/responses", {"model": targets.MODEL, "input": PROMPT,
                                             "max_output_tokens": 16, **flag}),
        "messages": ("/messages", {"model": targets.MODEL, "messages": user,
                                    "max_tokens": 16, **flag}),
    }  # fmt: skip


async def _load(
    url: str, body: bytes, headers: dict[str, str], conc: int, seconds: float
) -> tuple[float, float]:
    """(p50 ms, requests per second) of a closed loop of ``conc`` clients for ``seconds``."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client(until: float) -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                async with session.post(url, data=body) as response:
                    await response.read()
                    assert response.status == 200, await response.text()
                latencies.append(time.perf_counter() - started)

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(client(warm) for _ in range(conc)))
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(conc)))
        elapsed = time.perf_counter() - started
    return statistics.median(latencies) * 1000, len(latencies) / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--conc", default="1,16")
    args = parser.parse_args(argv)
    concs = [int(c) for c in args.conc.split(",")]
    shared = Path(os.environ.get("CMG_SHARED", ROOT.parent / "shared"))
    logs = Path(tempfile.mkdtemp(prefix="cmg-surfaces-"))
    scenario = SCENARIOS["memory-off"]
    rows: list[tuple[str, str, int, float, float]] = []
    with targets.mock_upstream(shared, Path(sys.executable), logs) as direct:
        with targets.gateway(direct.base_url, scenario, logs) as gateway:
            auth = {"Authorization": f"Bearer {gateway.api_key}", **gateway.headers,
                    "Content-Type": "application/json"}  # fmt: skip
            for stream in (False, True):
                mode = "SSE" if stream else "JSON"
                for name, (path, body) in _bodies(stream).items():
                    for conc in concs:
                        p50, rps = asyncio.run(_load(gateway.base_url + path,
                                                     orjson.dumps(body), auth, conc,
                                                     args.duration))  # fmt: skip
                        rows.append((name, mode, conc, p50, rps))
                        print(f"{name:>17} {mode:>4} c={conc:<3} p50 {p50:7.2f} ms "
                              f"{rps:8.1f} req/s", flush=True)  # fmt: skip
                chat = orjson.dumps(_bodies(stream)["chat"][1])
                url = direct.base_url + "/chat/completions"
                for conc in concs:
                    p50, rps = asyncio.run(_load(url, chat, {}, conc, args.duration))
                    rows.append(("direct", mode, conc, p50, rps))
                    print(f"{'direct':>17} {mode:>4} c={conc:<3} p50 {p50:7.2f} ms "
                          f"{rps:8.1f} req/s", flush=True)  # fmt: skip
    print(_table(rows, concs))


def _table(rows: list[tuple[str, str, int, float, float]], concs: list[int]) -> str:
    by = {(n, m, c): (p, r) for n, m, c, p, r in rows}
    lines = ["| surface | mode | added p50 ms c=1 | req/s c=16 | vs chat c=16 |",
             "|---|---|---|---|---|"]  # fmt: skip
    for mode in ("JSON", "SSE"):
        floor = by.get(("direct", mode, 1), (0.0, 0.0))[0]
        chat = by.get(("chat", mode, max(concs)), (0.0, 1.0))[1]
        for name in ("chat", "responses", "responses stored", "messages"):
            p50 = by.get((name, mode, 1), (0.0, 0.0))[0]
            rps = by.get((name, mode, max(concs)), (0.0, 0.0))[1]
            added = p50 - floor
            lines.append(f"| {name} | {mode} | {added:.2f} | {rps:.0f} | {rps / chat:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
