"""``POST /v1/messages``: Anthropic's Messages API on the chat pipeline.

1 auth (``x-api-key`` or ``Authorization: Bearer``, a workspace key; ``anthropic-version`` is
accepted and not needed) → 2 parse and translate to a chat-completions body
(``messages_translate.to_chat``) → stages 3-9 of ``chat.complete`` (limits, memory, forward,
relay, capture, usage under the route ``messages``) → the answer translated back: a Message, or
Anthropic's SSE event sequence. Memory is placed as for chat (``CMG_MEMORY_PLACEMENT``). A route
whose providers all serve ``/messages`` (``messages = "native"``) gets the body as sent instead,
memory placed in it (``native.py``), and the provider's answer as it wrote it.
Every error on this route has Anthropic's shape, ``{"type": "error", "error": {"type",
"message"}}``, with the status chat completions would give.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from core.errors import GatewayError
from gateway.services.protocol import ChatRequest, parse_object
from gateway.services.streaming import EventStream
from gateway.surfaces.chat import arrive, complete
from gateway.surfaces.messages_translate import StreamState, error_body, to_chat, to_message
from gateway.surfaces.native import MessagesTap, Native, is_native, messages_answer, place_messages
from memory.offload import offload


async def messages(request: Request) -> Response:
    try:
        return await _messages(request)
    except GatewayError as exc:
        obs = request.scope.get("state", {}).get("obs")
        if obs is not None:
            obs.error_code = exc.code
        return _error(exc.status, exc.message, exc.headers)


async def _messages(request: Request) -> Response:
    deps, caller, raw, started = await arrive(request, request.headers.get("x-api-key") or None)
    body = await offload(len(raw), parse_object, raw)
    chat = ChatRequest.of(to_chat(body))
    if is_native(deps.router.route(chat.model), "messages"):
        native = Native("/messages", raw, body, place_messages, messages_answer)
        done = await complete(
            request, deps, caller, chat, started, route_label="messages", native=native,
            tap=MessagesTap(),
        )  # fmt: skip
        if done.stream is not None:
            return EventStream(done.stream, done.status, done.headers)
        return Response(done.body, done.status, done.headers, media_type="application/json")
    done = await complete(request, deps, caller, chat, started, route_label="messages")
    if done.stream is not None:
        state = StreamState(chat.model, f"msg_{uuid.uuid4().hex}")
        return EventStream(_events(done.stream, state), done.status, done.headers)
    if done.status >= 400:
        error = done.parsed.get("error") if isinstance(done.parsed, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return _error(done.status, str(message or "the provider refused the request"), done.headers)
    answer = orjson.dumps(to_message(done.parsed, chat.model))
    return Response(answer, done.status, done.headers, media_type="application/json")


async def _events(chunks: AsyncIterator[bytes], state: StreamState) -> AsyncIterator[bytes]:
    """The relayed chat SSE, event by event, as Anthropic events."""
    pending = b""
    try:
        async for data in chunks:
            pending += data
            *events, pending = pending.split(b"\n\n")
            out = b"".join(_event(event, state) for event in events)
            if out:
                yield out
            if state.finished:
                return
        yield state.end()
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def _event(event: bytes, state: StreamState) -> bytes:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return state.end()
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(chunk, dict):
            return state.chunk(chunk)
    return b""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(error_body(status, message))
    return Response(body, status, headers, media_type="application/json")
