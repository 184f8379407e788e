"""``POST /v1/chat/completions``: the pipeline, top to bottom.

auth → parse → route → plan memory (thread, user, mode) → recall + inject + fit →
forward (retries, fallbacks) → relay (JSON or SSE) → remember (committed before the response ends).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import threads
from gateway.auth import authenticate
from gateway.deps import Deps
from gateway.errors import ServiceUnavailable, UpstreamError, UpstreamTimeout
from gateway.protocol import ChatRequest, read_body
from gateway.providers.client import Upstream
from gateway.streaming import StreamTap, answer, relay
from memory.service import Recalled

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DEFAULT_RESERVE = 1024
log = logging.getLogger("cmg.chat")

Remember = Callable[[dict[str, Any] | None], Awaitable[None]]


async def chat_completions(request: Request) -> Response:
    started = time.perf_counter()
    deps: Deps = request.state.deps
    caller = await authenticate(request, deps.keys)
    chat = ChatRequest.parse(await read_body(request, deps.settings.max_body_bytes))
    route = deps.router.route(chat.model)
    deps.catalog.check(route[0])
    plan = threads.plan(request, caller, chat, deps.settings.memory_default)
    recalled = await _recall(deps, plan, chat, route[0].served) if plan.read else None
    forwarded = chat.with_messages(recalled.messages) if recalled and recalled.messages != chat.messages else chat
    upstream = await deps.providers.send("/chat/completions", forwarded, route)
    headers = {"X-CMG-Provider": upstream.target.provider.name}
    if recalled is not None:
        headers.update(recalled.headers(plan.scope.thread_id))
    remember = _rememberer(deps, plan, chat, recalled, request) if plan.active else None
    if chat.stream and upstream.content_type.startswith("text/event-stream"):
        headers.update(SSE_HEADERS)
        headers["X-Gateway-Overhead-Ms"] = _ms(upstream.started - started)
        on_end = (lambda tap: remember(answer(tap))) if remember else None
        return StreamingResponse(
            relay(upstream, StreamTap(), on_end),
            status_code=upstream.response.status,
            headers=headers,
            media_type="text/event-stream",
        )
    body = await read_json(upstream)
    upstream_s = time.perf_counter() - upstream.started
    if remember is not None:
        await remember(_first_message(body))
    headers["X-Gateway-Overhead-Ms"] = _ms(time.perf_counter() - started - upstream_s)
    return Response(body, upstream.response.status, headers, media_type="application/json")


async def _recall(deps: Deps, plan: threads.Plan, chat: ChatRequest, served: str) -> Recalled:
    window = deps.catalog.context_length(served) or deps.settings.context_window_default
    reserve = chat.body.get("max_completion_tokens") or chat.body.get("max_tokens")
    try:
        return await deps.memory.recall(
            plan.scope,
            chat.messages,
            model=served,
            window=window,
            reserve=reserve if isinstance(reserve, int) and reserve > 0 else _DEFAULT_RESERVE,
        )
    except (SQLAlchemyError, OSError) as exc:
        raise ServiceUnavailable("memory is unavailable; retry, or send X-Memory: off") from exc


def _rememberer(
    deps: Deps, plan: threads.Plan, chat: ChatRequest, recalled: Recalled | None, request: Request
) -> Remember:
    request_id: str = request.scope.get("state", {}).get("request_id", "")

    async def remember(answer_message: dict[str, Any] | None) -> None:
        try:
            await deps.memory.remember(
                plan.scope,
                chat.messages,
                answer_message,
                write=plan.write,
                request_id=request_id,
                recalled=recalled,
            )
        except (SQLAlchemyError, OSError) as exc:
            log.error("could not store the turn of request %s: %s", request_id, type(exc).__name__)
            raise ServiceUnavailable(
                "the answer could not be stored in memory; retry", code="memory_unavailable"
            ) from exc

    return remember


def _first_message(body: bytes) -> dict[str, Any] | None:
    parsed = orjson.loads(body)
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        return message if isinstance(message, dict) else None
    return None


async def read_json(upstream: Upstream) -> bytes:
    """The whole upstream body, checked to be JSON (a 502 when it is not)."""
    name = upstream.target.provider.name
    try:
        body = await upstream.response.read()
    except TimeoutError as exc:
        raise UpstreamTimeout(f"provider {name} stopped sending", code="upstream_timeout") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            f"provider {name} broke off the response: {type(exc).__name__}", code="upstream_broken"
        ) from exc
    finally:
        upstream.response.release()
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(
            f"provider {name} returned a body that is not JSON", code="bad_upstream_json"
        ) from exc
    return body


def _ms(seconds: float) -> str:
    return f"{max(seconds, 0.0) * 1000:.2f}"
