"""SSE relay: upstream events go to the client one by one, as they arrive, unchanged.

Each complete event is checked (its ``data`` must be JSON or ``[DONE]``) and observed by a
``StreamTap`` that assembles the answer and usage for memory and accounting. After the
stream has started nothing can change the status code: an upstream failure becomes one
``data: {"error": ...}`` event and the stream ends cleanly. A client disconnect cancels the
generator, whose ``finally`` closes the upstream response, so the provider sees it too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core import metrics
from core.errors import GatewayError, error_body
from core.providers.client import Upstream


@dataclass
class StreamTap:
    """What the stream said, reassembled: per-choice text and tool calls, usage, errors."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    model: str | None = None
    finish_reason: str | None = None
    error: dict[str, Any] | None = None
    done: bool = False

    def observe(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("error"), dict):
            self.error = chunk["error"]
        self.model = chunk.get("model") or self.model
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
        delta = choice.get("delta") or {}
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("content"), str):
            self.texts.setdefault(index, []).append(delta["content"])
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._tool_call(index, call)

    def _tool_call(self, index: int, call: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(index, {}).setdefault(
            call.get("index", 0), {"id": None, "type": "function", "name": "", "arguments": ""}
        )
        slot["id"] = call.get("id") or slot["id"]
        function = call.get("function") or {}
        slot["name"] += function.get("name") or ""
        slot["arguments"] += function.get("arguments") or ""

    def text(self, index: int = 0) -> str:
        return "".join(self.texts.get(index, ()))

    # A tap that translates the stream (Responses in translate mode) sends ``rewrite(chunk)``
    # for each provider chunk instead of the chunk itself, and nothing for ``[DONE]``.
    rewrites = False

    def rewrite(self, chunk: dict[str, Any]) -> bytes:
        return b""

    def error_event(self, message: str, type: str, code: str | None) -> bytes:
        """An error as this stream's own kind of event (chat completions: an ``error`` chunk)."""
        return sse_error(message, type, code)


class EventStream(Response):
    """An SSE response sent straight over ASGI.

    Starlette's ``StreamingResponse`` runs an anyio task group per response (about a tenth of a
    core at 800 streams/s); here one plain task waits for the client's disconnect and cancels
    the relay, whose ``finally`` closes the upstream response.
    """

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncIterator[bytes], status_code: int, headers: dict[str, str]
    ) -> None:
        self.events = events
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        state = {"left": False, "over": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["over"]:
                state["left"] = True
                streaming.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            state["over"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["left"]:
                raise
            streaming.uncancel()  # the client left: not an error, the relay's finally cleans up
        finally:
            state["over"] = True
            watcher.cancel()
            await self.events.aclose()  # type: ignore[attr-defined]


def sse_error(message: str, type: str, code: str | None) -> bytes:
    return b"data: " + orjson.dumps(error_body(message, type, None, code)) + b"\n\n"


def answer(tap: StreamTap) -> dict[str, Any] | None:
    """The streamed first choice as an assistant message (for memory)."""
    calls = [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for _, c in sorted(tap.tool_calls.get(0, {}).items())
    ]
    return assistant_message(tap.text(0), calls)


def assistant_message(text: str, calls: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The answer as memory keeps it (None when it said nothing)."""
    if not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


OnEnd = Callable[[StreamTap], Awaitable[None]]


async def relay(
    upstream: Upstream, tap: StreamTap, on_end: OnEnd | None = None
) -> AsyncIterator[bytes]:
    """Relay events; ``on_end`` (remember the turn) runs before the final ``[DONE]`` goes out."""
    splitter = _EventSplitter()
    ended = False
    try:
        async for chunk in upstream.response.content.iter_any():
            events = splitter.feed(chunk)
            if not events:
                continue
            out, bad = _check(events, tap)
            if bad:
                yield out + _malformed(tap)
                return
            if tap.done and on_end is not None and not ended:
                ended = True
                failure = await _finish(on_end, tap)
                if failure:
                    yield out.replace(b"data: [DONE]\n\n", b"") + failure
                    return
            if out:
                yield out
        tail = splitter.rest()
        if tail:
            out, bad = _check([tail], tap)
            yield out if not bad else _malformed(tap)
        if on_end is not None and not ended:
            ended = True
            failure = await _finish(on_end, tap)
            if failure:
                yield failure
    except (aiohttp.ClientError, TimeoutError) as exc:
        tap.error = {"message": type(exc).__name__}
        metrics.UPSTREAM_ERRORS.labels(upstream.target.provider.name, "stream").inc()
        yield tap.error_event(
            f"the provider stream broke off: {type(exc).__name__}", "upstream_error", "stream_error"
        )
    finally:
        upstream.close()
        if on_end is not None and not ended:
            # Broken off or the client left: keep what was said, without blocking the teardown.
            _background(on_end(tap))


async def _finish(on_end: OnEnd, tap: StreamTap) -> bytes:
    """Run the end hook; its failure becomes an error event instead of a torn stream."""
    try:
        await on_end(tap)
    except GatewayError as exc:
        return tap.error_event(exc.message, exc.type, exc.code)
    return b""


def _malformed(tap: StreamTap) -> bytes:
    return tap.error_event("provider sent a malformed stream event", "upstream_error", "bad_sse")


_PENDING: set[asyncio.Task[None]] = set()


def _background(work: Awaitable[None]) -> None:
    async def run() -> None:
        try:
            await work
        except Exception:  # logged by the caller's hook; a failed save must not crash the loop
            logging.getLogger("cmg.stream").exception("saving a broken-off stream failed")

    task = asyncio.get_running_loop().create_task(run())
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


class _EventSplitter:
    """Bytes in, complete SSE events (without the blank-line terminator) out."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        *events, self._buffer = data.split(b"\n\n")
        return events

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer.strip(), b""
        return rest


def _check(events: list[bytes], tap: StreamTap) -> tuple[bytes, bool]:
    """The events re-framed for the client, and whether one of them was malformed."""
    good: list[bytes] = []
    rewrites = tap.rewrites
    for event in events:
        rewritten = b""
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                tap.done = True
                continue
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                return b"".join(good), True
            if isinstance(parsed, dict):
                tap.observe(parsed)
                if rewrites:
                    rewritten += tap.rewrite(parsed)
        good.append(rewritten if rewrites else event + b"\n\n")
    return b"".join(good), False
