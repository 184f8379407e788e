"""``/v1/responses``: OpenAI's Responses API on the chat pipeline.

1 auth → 2 parse, rebuild the chain of ``previous_response_id`` from what was stored, translate
to a chat-completions body (``responses_translate.to_chat``) → stages 3-9 of ``chat.complete``
(limits, memory, forward, relay, capture, usage under the route ``responses``) → the Response
object, or the Responses event stream; stored (``store``, default true) for retrieval and for
the next turn of the chain. A chain is one memory thread: each turn resends the conversation
from its first message, so the thread fingerprint (or ``X-Thread-Id``) stays the same.
A route whose providers all serve ``/responses`` (``responses = "native"``) gets the body as sent
instead, memory placed in it (``native.py``); the Response comes back as the provider wrote it and
is stored under the provider's id, and ``previous_response_id`` is forwarded as is, once this
workspace's store has vouched for it (the provider's store is shared by every workspace).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import delete
from starlette.requests import Request
from starlette.responses import Response

from core.errors import BadRequest, NotFound, json_response
from gateway.deps import Deps
from gateway.services.auth import Caller, authenticate
from gateway.services.protocol import ChatRequest, parse_object
from gateway.services.stored_responses import Stored
from gateway.services.streaming import EventStream, StreamTap
from gateway.surfaces.chat import arrive, complete
from gateway.surfaces.native import (
    Native,
    ResponsesTap,
    is_native,
    place_responses,
    responses_answer,
)
from gateway.surfaces.responses_translate import (
    StreamState,
    assistant_messages,
    new_id,
    output_items,
    response_object,
    to_chat,
    usage,
)
from memory.offload import offload
from memory.schema import StoredResponse


async def create_response(request: Request) -> Response:
    deps, caller, raw, started = await arrive(request)
    body = await offload(len(raw), parse_object, raw)
    history = await _history(deps, caller, body.get("previous_response_id"))
    chat_body, conversation = to_chat(body, history)
    chat = ChatRequest.of(chat_body)
    if is_native(deps.router.route(chat.model), "responses"):
        return await _native(request, deps, caller, raw, body, chat, conversation, started)
    resp_id, created = new_id("resp"), int(time.time())
    state = StreamState(resp_id, body, created)
    tap = _Translating(state)
    done = await complete(request, deps, caller, chat, started, route_label="responses", tap=tap)
    saved = _Saver(deps, caller, body, conversation, resp_id)
    if done.stream is not None:
        return EventStream(_events(done.stream, state, saved), done.status, done.headers)
    if done.status >= 400:  # the provider's error, already OpenAI-shaped
        return Response(done.body, done.status, done.headers, media_type="application/json")
    choices = done.parsed.get("choices") if isinstance(done.parsed, dict) else None
    message = choices[0].get("message") if isinstance(choices, list) and choices else None
    chat_usage = done.parsed.get("usage") if isinstance(done.parsed, dict) else None
    obj = response_object(
        resp_id, body, output_items(message), "completed", usage(chat_usage), created
    )
    saved.save(obj)
    return json_response(obj, done.status, done.headers)


async def _native(
    request: Request, deps: Deps, caller: Caller, raw: bytes, body: dict[str, Any],
    chat: ChatRequest, conversation: list[Any], started: float,
) -> Response:  # fmt: skip
    """The body as sent (memory placed) to a provider that serves ``/responses``; its Response
    (or events) relayed as is, and stored under the provider's id for the next turn."""
    tap = ResponsesTap()
    native = Native("/responses", raw, body, place_responses, responses_answer)
    done = await complete(
        request, deps, caller, chat, started, route_label="responses", native=native, tap=tap
    )
    saved = _Saver(deps, caller, body, conversation)
    if done.stream is not None:
        return EventStream(_stored_at_end(done.stream, tap, saved), done.status, done.headers)
    if done.status < 400 and isinstance(done.parsed, dict):
        saved.save(done.parsed)
    return Response(done.body, done.status, done.headers, media_type="application/json")


async def _stored_at_end(
    chunks: AsyncIterator[bytes], tap: ResponsesTap, saved: _Saver
) -> AsyncIterator[bytes]:
    """Relayed events; the finished Response is stored before the event that carries it goes
    out, so a client chaining on ``response.completed`` finds it."""
    try:
        async for data in chunks:
            if tap.final is not None and not saved.done:
                saved.save(tap.final)
            yield data
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def get_response(request: Request) -> Response:
    deps, caller = await _caller(request)
    row = await _row(deps, caller, request.path_params["response_id"])
    return json_response(row.response)


async def delete_response(request: Request) -> Response:
    deps, caller = await _caller(request)
    resp_id = request.path_params["response_id"]
    await deps.responses.settled(caller.workspace_id, resp_id)  # a write still queued lands first
    async with deps.sessions.begin() as session:
        gone = await session.execute(
            delete(StoredResponse).where(
                StoredResponse.workspace_id == uuid.UUID(caller.workspace_id),
                StoredResponse.id == resp_id,
            )
        )
    if not gone.rowcount:
        raise _missing(resp_id)
    return json_response({"id": resp_id, "object": "response.deleted", "deleted": True})


async def list_input_items(request: Request) -> Response:
    deps, caller = await _caller(request)
    row = await _row(deps, caller, request.path_params["response_id"])
    items = row.input_items
    return json_response({
        "object": "list", "data": items, "has_more": False,
        "first_id": items[0].get("id") if items else None,
        "last_id": items[-1].get("id") if items else None,
    })  # fmt: skip


async def _caller(request: Request) -> tuple[Deps, Caller]:
    deps: Deps = request.scope["state"]["deps"]
    caller = await authenticate(request, deps.keys)
    return deps, caller


async def _row(deps: Deps, caller: Caller, resp_id: str) -> Stored:
    row = await deps.responses.get(caller.workspace_id, resp_id)
    if row is None:
        raise _missing(resp_id)
    return row


def _missing(resp_id: str) -> NotFound:
    return NotFound(f"no response {resp_id!r}", param="response_id", code="not_found")


async def _history(deps: Deps, caller: Caller, previous: Any) -> list[dict[str, Any]]:
    """The chat messages of a stored chain up to and including ``previous``'s answer."""
    if previous is None:
        return []
    if not isinstance(previous, str) or not previous:
        raise BadRequest("previous_response_id: a response id", param="previous_response_id")
    row = await deps.responses.get(caller.workspace_id, previous)
    if row is None:
        raise NotFound(
            f"previous response {previous!r} not found (not stored, deleted, or of another "
            "workspace)", param="previous_response_id", code="not_found",
        )  # fmt: skip
    return list(row.conversation) + assistant_messages(row.response.get("output") or [])


class _Saver:
    """Stores a finished response when the request asked for it (``store``, default true),
    through the grouped writer (``gateway/services/stored_responses.py``)."""

    def __init__(
        self, deps: Deps, caller: Caller, body: dict[str, Any], conversation: list[Any],
        resp_id: str | None = None,
    ) -> None:  # fmt: skip
        self.deps, self.caller, self.body = deps, caller, body
        self.conversation, self.resp_id = conversation, resp_id
        self.done = False

    def save(self, obj: dict[str, Any]) -> None:
        """Store ``obj`` under our id, or the provider's (native mode); once per request."""
        resp_id = self.resp_id or obj.get("id")
        if self.done or self.body.get("store") is False or not isinstance(resp_id, str):
            return
        self.done = True
        stored = Stored(obj, _input_items(self.body.get("input")), self.conversation)
        self.deps.responses.add(self.caller.workspace_id, resp_id, stored)


def _input_items(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        value = [{"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": value}]}]  # fmt: skip
    items = []
    for item in value if isinstance(value, list) else []:
        item = dict(item)
        item.setdefault("type", "message")
        item.setdefault("id", new_id("msg" if item["type"] == "message" else "item"))
        items.append(item)
    return items


class _Translating(StreamTap):
    """Reads the relayed chat stream for memory and usage, and sends it on as Responses events
    (the relay parses each chunk once, for both)."""

    rewrites = True

    def __init__(self, state: StreamState) -> None:
        super().__init__()
        self.state = state

    def rewrite(self, chunk: dict[str, Any]) -> bytes:
        return b"" if self.state.finished else self.state.chunk(chunk)

    def error_event(self, message: str, type: str, code: str | None) -> bytes:
        return b"" if self.state.finished else self.state.fail(message)


async def _events(
    chunks: AsyncIterator[bytes], state: StreamState, saved: _Saver
) -> AsyncIterator[bytes]:
    """The translated events between ``response.created`` and ``response.completed``; the
    finished response is stored before its last event goes out."""
    try:
        yield state.start()
        async for data in chunks:
            if data:
                yield data
            if state.finished:
                break
        if not state.finished:
            last = state.end()
            saved.save(state.final())
            yield last
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
