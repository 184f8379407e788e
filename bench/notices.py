"""Change notices: PostgreSQL LISTEN/NOTIFY (from the trigger) against Redis pub/sub.

Each round commits one change to a workspace row and times it until a listener in another
thread holds the notice: with NOTIFY the trigger of migration 0006 sends it at commit; with
Redis the writer publishes after its commit (what every writer would have to do). Also the
writer's own time per change. Starts embedded PostgreSQL and Redis in a temp dir and stops them.

    python -m bench.notices [--rounds 500]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from queue import Queue

import psycopg
import redis

from bench.processes import stop_on_signals
from gateway.ops import local_services
from memory import migrate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args(argv)
    stop_on_signals()
    data_dir = Path(tempfile.mkdtemp(prefix="cmg-notices-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, data_dir, True)
        pg = local_services.start_postgres(data_dir)
        stack.callback(pg.stop)
        rd = local_services.start_redis(data_dir)
        stack.callback(rd.stop)
        migrate.upgrade(pg.url)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("INSERT INTO workspaces (id, name, settings, created_at) VALUES "
                         "(gen_random_uuid(), 'bench', '{}', now())")  # fmt: skip
        for name, run in (("postgres NOTIFY", _notify), ("redis PUBLISH", _publish)):
            delivered, written = run(pg.url, rd.url, args.rounds)
            after = [d - w for d, w in zip(delivered, written, strict=True)]
            print(f"{name:<16} change to notice p50 {_ms(delivered, 50)} p99 {_ms(delivered, 99)}"
                  f" | after the writer returns p50 {_ms(after, 50)} p99 {_ms(after, 99)}"
                  f" | writer p50 {_ms(written, 50)} ms")  # fmt: skip


def _ms(values: list[float], pct: int) -> str:
    return f"{statistics.quantiles(values, n=100)[pct - 1] * 1000:.3f}"


def _change(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with conn.transaction():
        conn.execute("UPDATE workspaces SET settings = settings WHERE name = 'bench'")


def _rounds(
    rounds: int, write: Callable[[], None], heard: Queue[float]
) -> tuple[list[float], list[float]]:
    delivered, written = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        write()
        written.append(time.perf_counter() - started)
        delivered.append(heard.get(timeout=10) - started)
    return delivered, written


def _notify(pg_url: str, redis_url: str, rounds: int) -> tuple[list[float], list[float]]:
    heard: Queue[float] = Queue()
    ready = threading.Event()

    def listen() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("LISTEN cmg_changes")
            ready.set()
            for _ in conn.notifies(stop_after=rounds, timeout=60):
                heard.put(time.perf_counter())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    with psycopg.connect(pg_url) as conn:
        result = _rounds(rounds, lambda: _change(conn), heard)
    thread.join(10)
    return result


def _publish(pg_url: str, redis_url: str, rounds: int) -> tuple[list[float], list[float]]:
    heard: Queue[float] = Queue()
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("cmg_changes")
    pubsub.get_message(timeout=5)  # the subscribe confirmation

    def listen() -> None:
        got = 0
        while got < rounds:
            if pubsub.get_message(timeout=1) is not None:
                heard.put(time.perf_counter())
                got += 1

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()

    def write() -> None:
        _change(conn)
        client.publish("cmg_changes", "workspaces")

    with psycopg.connect(pg_url) as conn:
        result = _rounds(rounds, write, heard)
    thread.join(10)
    pubsub.close()
    client.close()
    return result


if __name__ == "__main__":
    main()
