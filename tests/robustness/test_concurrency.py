"""Hundreds of concurrent SSE streams through one gateway process, each getting exactly its own.

Every client sends a unique message; the mock upstream answers ``echo: <message>`` in chunks.
Each reassembled stream must equal its own echo, in order, and end with ``[DONE]``. The
memory-off run holds every upstream answer back a moment (a scripted delay), so all streams are
in flight inside the gateway at once; the memory-on run adds recall and the store to each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import Gateway, Services, Tenant
from tests.mock_upstream import MockUpstream, Reply
from tests.robustness.conftest import record, store_counts


@dataclass
class Stream:
    message: str
    status: int = 0
    data: list[str] = field(default_factory=list)
    sent: float = 0.0
    done: float = 0.0
    error: str = ""

    def text(self) -> str:
        pieces = []
        for event in self.data[:-1]:
            chunk = orjson.loads(event)
            for choice in chunk.get("choices") or ():
                pieces.append(choice.get("delta", {}).get("content") or "")
        return "".join(pieces)

    def problem(self) -> str | None:
        if self.error or self.status != 200:
            return f"status {self.status} {self.error}"
        if not self.data or self.data[-1] != "[DONE]":
            return f"last data line is {self.data[-1:]!r}, not [DONE]"
        errors = [event for event in self.data[:-1] if '"error"' in event]
        if errors:
            return f"error event: {errors[0][:200]}"
        if self.text() != f"echo: {self.message}":
            return f"got {self.text()[:120]!r}"
        return None


async def _stream(
    session: aiohttp.ClientSession, url: str, model: str, key: str, memory: bool, stream: Stream
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    if not memory:
        headers["X-Memory"] = "off"
    body = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": stream.message}],
    }
    stream.sent = time.monotonic()
    try:
        async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
            stream.status = response.status
            async for line in response.content:
                if line.startswith(b"data:"):
                    stream.data.append(line[5:].strip().decode())
            stream.done = time.monotonic()
    except (aiohttp.ClientError, TimeoutError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"


def run_streams(
    gateway: Gateway, tenant: Tenant, model: str, count: int, memory: bool
) -> list[Stream]:
    tag = uuid.uuid4().hex[:8]
    streams = [
        Stream(f"stream {i} of {tag}: the {i % 7} quick foxes jump over {i * 31 % 97} dogs")
        for i in range(count)
    ]

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            url = gateway.url + "/v1/chat/completions"
            await asyncio.gather(
                *(_stream(session, url, model, tenant.key, memory, s) for s in streams)
            )

    asyncio.run(main())
    return streams


def peak_in_flight(streams: list[Stream]) -> int:
    """Most requests between being sent and their last byte at one moment."""
    edges = sorted([(s.sent, 1) for s in streams] + [(s.done or s.sent, -1) for s in streams])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def check(streams: list[Stream], name: str, started: float) -> int:
    failures = [f"#{i}: {p}" for i, s in enumerate(streams) if (p := s.problem()) is not None]
    record(name, len(streams))
    seconds = time.monotonic() - started
    peak = peak_in_flight(streams)
    print(f"{name}: {seconds:.1f}s, peak in flight {peak}, failed {len(failures)}")
    assert not failures, f"{len(failures)} of {len(streams)} streams went wrong:\n" + "\n".join(
        failures[:20]
    )
    return peak


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of a running process (Linux), or None when unknown."""
    try:
        limits = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    return None


@pytest.mark.timeout(180)
def test_500_concurrent_streams_each_get_exactly_their_own_tokens(
    gateway: Gateway, tenant: Tenant, mock: MockUpstream
) -> None:
    # each stream holds two sockets in the gateway: the client's and the upstream's
    limit = open_files_limit(gateway.proc.pid)
    print(f"gateway open-files limit: {limit}")
    assert limit is None or limit >= 1100, f"the gateway may open only {limit} files (ulimit -n)"
    upstream_model = f"conc-{uuid.uuid4().hex[:8]}"
    mock.script(upstream_model, *[Reply.delay(0.5)] * 500)  # all 500 in flight at once
    started = time.monotonic()
    streams = run_streams(gateway, tenant, f"alt/{upstream_model}", 500, memory=False)
    peak = check(streams, "concurrent SSE streams, memory off", started)
    assert peak >= 400, f"only {peak} streams were in flight at once"


@pytest.mark.timeout(180)
def test_100_concurrent_streams_with_memory_each_get_their_own_and_are_stored(
    gateway: Gateway, services: Services, tenant: Tenant
) -> None:
    started = time.monotonic()
    streams = run_streams(gateway, tenant, "mock/gpt", 100, memory=True)
    check(streams, "concurrent SSE streams, memory on", started)
    counts = store_counts(services, tenant.name)
    assert counts["threads"] == 100 and counts["memory_items"] == 200, counts
