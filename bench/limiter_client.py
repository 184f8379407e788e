"""CPU per rate-limit check: the limiter's own client against redis-py's, on one core.

    python -m bench.limiter_client            # 3 s per point, c=1,16,64

Both run the limiter's Lua script for two limits (key and workspace) against an embedded Redis,
on uvloop like the gateway: ``Limiter.admit`` (then its headers and a reconciliation, as a
request does) over ``gateway.services.scriptpipe``, and the same script through a redis-py pipeline
holding the calls of one loop turn (what the limiter used before). Pin it (``taskset -c 1``)
for figures comparable with the gateway's one core. Prints a table; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
import uvloop

from bench.processes import stop_on_signals
from gateway.ops import local_services
from gateway.services.limits import _SCRIPT, Limit, Limiter

LIMITS = (Limit("key:bench", 10**9, 10**12), Limit("ws:bench", 10**9, 10**12))


async def _measure(call: Callable[[], Awaitable[object]], conc: int, seconds: float) -> str:
    for _ in range(100):
        await asyncio.gather(*(call() for _ in range(conc)))
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        await asyncio.gather(*(call() for _ in range(conc)))
        done += conc
    rate = done / (time.perf_counter() - started)
    return f"{rate:,.0f} | {1e6 * (time.process_time() - cpu) / done:.0f}"


async def _run(url: str, concurrencies: list[int], seconds: float) -> list[str]:
    limiter = Limiter(url, fail_open=False)
    client = aioredis.Redis.from_url(url)
    sha = await client.script_load(_SCRIPT)
    keys = [f"cmg:rl:{lim.subject}" for lim in LIMITS]
    turn: list[tuple[list[int], asyncio.Future[object]]] = []

    async def admit() -> object:
        admission = await limiter.admit(LIMITS, 100)
        admission.headers()
        limiter.reconcile(admission, 90)
        return admission

    async def flush() -> None:
        batch = turn[:]
        turn.clear()
        pipe = client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.evalsha(sha, len(keys), *keys, *args)
        for (_, future), reply in zip(batch, await pipe.execute(), strict=True):
            future.set_result(reply)

    async def redis_py() -> object:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        if not turn:
            loop.call_soon(lambda: loop.create_task(flush()))
        turn.append(
            (
                [int(time.time() * 1000), 100, *[v for lim in LIMITS for v in (lim.rpm, lim.tpm)]],
                future,
            )
        )
        return await future

    rows = []
    try:
        for conc in concurrencies:
            for label, call in (("`Limiter.admit` (scriptpipe)", admit),
                                ("redis-py pipeline, EVALSHA only", redis_py)):  # fmt: skip
                rows.append(f"| {label} | {conc} | {await _measure(call, conc, seconds)} |")
    finally:
        await limiter.close()
        await client.aclose()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter_client", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--conc", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64]
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    stop_on_signals()  # SIGTERM unwinds too: the redis-server is stopped
    with tempfile.TemporaryDirectory(prefix="cmg-limiter-") as data:
        server = local_services.start_redis(Path(data))
        try:
            rows = uvloop.run(_run(server.url, args.conc, args.seconds))
        finally:
            server.stop()
    print("| client | conc | checks/s | CPU µs per check |\n|---|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
