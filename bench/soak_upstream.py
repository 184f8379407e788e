"""The provider at the far end of the soak (``bench/soak.py``): paced answers, a few failures.

Stdlib asyncio (uvloop when importable), one raw ``asyncio.Protocol`` per connection, loopback
only, so that thousands of paced streams cost it little. It serves ``/v1/chat/completions``
(JSON, or SSE when the body says ``"stream": true``; a usage chunk with
``stream_options.include_usage``), ``/v1/models`` (OpenRouter-shaped: context length, prices),
``/health`` and ``/mock/faults``.

Pacing: the first byte after ``--first-byte-ms`` (uniform in a range), then one SSE chunk per word
every ``--chunk-ms``; a JSON answer comes whole after the first-byte delay plus 2 ms a word.
Every answer starts with ``zqxa<soak id>``, the soak id being the body's ``metadata.soak_id``,
so the client can tell that it got its own answer.

Failures: each attempt fails with probability ``--error-rate``, as one of

    429    Retry-After: 1 and retry-after-ms: 20-100 (short: the gateway retries)
    429l   Retry-After: 30 (longer than the gateway waits: relayed at once)
    500    an OpenAI-shaped server error
    drop   the connection closes after the request is read, with no response
    reset  the status line and part of the answer (JSON body or stream), then a TCP RST

and a soak id that hashes into ``--sticky-rate`` fails on every attempt (``429s`` / ``500s``:
an outage the retries cannot hide). Error messages say ``mock-injected``. Every attempt of a
request that met a failure is recorded by soak id; ``GET /mock/faults`` returns those records
and counters, which is how the soak tells upstream-caused errors from gateway-caused ones.

    python bench/soak_upstream.py --port 9100 --error-rate 0.03
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import socket
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, cast

_STREAM = re.compile(rb'"stream"\s*:\s*true')
_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_SOAK_ID = re.compile(rb'"soak_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')
_WORDS = (
    "noted amber river cobalt lantern meadow orbit quartz saffron tundra velvet willow harbor "
    "falcon garnet juniper kestrel marble nectar pebble"
).split()
FAULTS = ("429", "429l", "500", "drop", "reset")
_WEIGHTS = (35, 10, 35, 10, 10)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class Config:
    model: str
    first_byte: tuple[float, float]  # seconds
    chunk: tuple[float, float]
    error_rate: float
    sticky_rate: float
    words: tuple[int, int]


@dataclass
class Ledger:
    """Counters, and every attempt of each request that met a failure (by soak id)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("attempts", "ok"), 0))
    faults: dict[str, list[str]] = field(default_factory=dict)

    def note(self, soak_id: str | None, outcome: str) -> None:
        self.counts["attempts"] += 1
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if soak_id is None:
            return
        if outcome != "ok" or soak_id in self.faults:
            self.faults.setdefault(soak_id, []).append(outcome)


def _http(status: str, body: bytes, headers: str = "", ctype: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        f"{headers}\r\n"
    )
    return head.encode() + body


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _error(status: int, message: str, type_: str, headers: str = "") -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": f"mock_{status}"}}
    phrase = {429: "429 Too Many Requests", 500: "500 Internal Server Error"}[status]
    return _http(phrase, _dumps(body), headers)


class Answer:
    """One chat answer: its words, and the bytes of it as JSON or as an event stream."""

    def __init__(self, cfg: Config, soak_id: str | None, body: bytes, rng: random.Random) -> None:
        n = rng.randint(*cfg.words)
        marker = f"zqxa{soak_id or 'none'} "
        self.words = [marker] + [rng.choice(_WORDS) + " " for _ in range(n - 1)]
        self.model = cfg.model
        self.created = int(time.time())
        self.id = f"chatcmpl-{soak_id or rng.getrandbits(40)}"
        prompt = max(1, len(body) // 4)
        self.usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}

    def json(self) -> bytes:
        message = {"role": "assistant", "content": "".join(self.words)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        body = {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model, "choices": [choice], "usage": self.usage,
        }  # fmt: skip
        return _http("200 OK", _dumps(body))

    def events(self, usage: bool) -> list[bytes]:
        """The stream's pieces: head + role chunk, one chunk per word, finish, [DONE] + end."""

        def event(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            choices = [] if delta is None else [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            ]  # fmt: skip
            chunk = {
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": choices, **extra,
            }  # fmt: skip
            return _chunked(b"data: " + _dumps(chunk) + b"\n\n")

        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        parts = [head + event({"role": "assistant", "content": ""})]
        parts += [event({"content": w}) for w in self.words]
        parts.append(event({}, "stop"))
        if usage:
            parts.append(event(None, usage=self.usage))
        parts.append(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return parts


class Mock:
    def __init__(self, cfg: Config, seed: int | None) -> None:
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        created = int(time.time())
        model = {
            "id": cfg.model, "object": "model", "created": created, "owned_by": "soak",
            "context_length": 32768,
            "pricing": {"prompt": "0.0000001", "completion": "0.0000004"},
        }  # fmt: skip
        self.models = _http("200 OK", _dumps({"object": "list", "data": [model]}))

    def fault_for(self, soak_id: str | None) -> str | None:
        if soak_id is not None and self.cfg.sticky_rate > 0:
            bucket = zlib.crc32(soak_id.encode()) % 100_000
            if bucket < self.cfg.sticky_rate * 100_000:
                return "429s" if bucket % 2 else "500s"
        if self.rng.random() < self.cfg.error_rate:
            return self.rng.choices(FAULTS, _WEIGHTS)[0]
        return None

    def between(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)


class Connection(asyncio.Protocol):
    """One client connection: requests served one at a time, in order (HTTP/1.1 keep-alive)."""

    def __init__(self, mock: Mock) -> None:
        self.mock = mock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers = []
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
            request = _parse(self.buf)
            if request is None:
                if len(self.buf) > 64 * 1024 * 1024:
                    self.transport.close()
                return
            method, path, body, end = request
            del self.buf[:end]
            self.busy = True
            self._dispatch(method, path.split(b"?", 1)[0].removeprefix(b"/v1"), body)

    # --- answers ---

    def _dispatch(self, method: bytes, path: bytes, body: bytes) -> None:
        mock = self.mock
        if method == b"POST" and path == b"/chat/completions":
            self._chat(body)
        elif path == b"/models":
            self._send(mock.models)
        elif path == b"/health":
            self._send(_http("200 OK", b"ok", ctype="text/plain"))
        elif path == b"/mock/faults":
            ledger = {"counts": mock.ledger.counts, "faults": mock.ledger.faults}
            self._send(_http("200 OK", _dumps(ledger)))
        else:
            error = {"error": {"message": "not found", "type": "invalid_request_error"}}
            self._send(_http("404 Not Found", _dumps(error)))

    def _chat(self, body: bytes) -> None:
        mock, cfg = self.mock, self.mock.cfg
        found = _SOAK_ID.search(body)
        soak_id = found.group(1).decode() if found else None
        fault = mock.fault_for(soak_id)
        mock.ledger.note(soak_id, fault or "ok")
        stream = _STREAM.search(body) is not None
        if fault in ("429", "429l", "429s", "500", "500s", "drop"):
            self._later(mock.between((0.005, 0.03)), self._fail, fault, soak_id)
            return
        answer = Answer(cfg, soak_id, body, mock.rng)
        first = mock.between(cfg.first_byte)
        if not stream:
            data = answer.json()
            if fault == "reset":
                self._later(first, self._reset_after, data[: len(data) - len(data) // 3])
            else:
                self._later(first + 0.002 * len(answer.words), self._send, data)
            return
        parts = answer.events(_USAGE.search(body) is not None)
        if fault == "reset":  # head, role chunk and some words, then RST
            parts = parts[: 1 + mock.rng.randint(0, len(answer.words) - 1)]
        at = first
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last and fault == "reset":
                self._later(at, self._reset_after, part)
            else:
                self._later(at, self._send, part, last)
            at += mock.between(cfg.chunk)

    def _fail(self, fault: str, soak_id: str | None) -> None:
        where = f" (soak {soak_id})" if soak_id else ""
        if fault == "drop":
            if self.transport is not None:
                self.transport.close()
            return
        if fault.startswith("500"):
            self._send(_error(500, f"mock-injected server error{where}", "server_error"))
            return
        wait = "Retry-After: 30\r\n" if fault == "429l" else (
            f"Retry-After: 1\r\nretry-after-ms: {self.mock.rng.randint(20, 100)}\r\n"
        )  # fmt: skip
        self._send(_error(429, f"mock-injected rate limit{where}", "rate_limit_error", wait))

    def _later(self, delay: float, callback: Any, *args: Any) -> None:
        self.timers.append(self.loop.call_later(delay, callback, *args))

    def _send(self, data: bytes, last: bool = True) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        if last:
            self.busy = False
            self.timers = []
            if self.buf:
                self._next()

    def _reset_after(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # linger 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()


def _parse(buf: bytearray) -> tuple[bytes, bytes, bytes, int] | None:
    """One complete request at the start of ``buf``: (method, path, body, end) or None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end])
    lines = head.split(b"\r\n")
    method, path = [*lines[0].split(b" "), b"", b""][:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    start = head_end + 4
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return _dechunk(buf, start, method, path)
    end = start + int(headers.get(b"content-length", b"0") or 0)
    if len(buf) < end:
        return None
    return method, path, bytes(buf[start:end]), end


def _dechunk(
    buf: bytearray, pos: int, method: bytes, path: bytes
) -> tuple[bytes, bytes, bytes, int] | None:
    out = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            return None if end < 0 else (method, path, bytes(out), end + 4)
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1", choices=_LOOPBACK)
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--model", default="soak/mock-gpt")
    p.add_argument("--first-byte-ms", default="20,80", help="range: time to the first byte")
    p.add_argument("--chunk-ms", default="5,20", help="range: gap between SSE chunks")
    p.add_argument("--words", default="6,16", help="range: words per answer")
    p.add_argument("--error-rate", type=float, default=0.03, help="failed attempts, 0-1")
    p.add_argument("--sticky-rate", type=float, default=0.002, help="requests failing throughout")
    p.add_argument("--seed", type=int)
    a = p.parse_args(argv)
    fb, ch, words = _range(a.first_byte_ms), _range(a.chunk_ms), _range(a.words)
    cfg = Config(
        a.model, (fb[0] / 1000, fb[1] / 1000), (ch[0] / 1000, ch[1] / 1000),
        a.error_rate, a.sticky_rate, (max(1, int(words[0])), max(1, int(words[1]))),
    )  # fmt: skip
    loop_factory: Any = None
    with contextlib.suppress(ImportError):
        from uvloop import new_event_loop as loop_factory
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(a.host, a.port, Mock(cfg, a.seed)))


async def _serve(host: str, port: int, mock: Mock) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(mock), host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"soak upstream on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        print(f"soak upstream served {json.dumps(mock.ledger.counts)}", file=sys.stderr)


if __name__ == "__main__":
    main()
