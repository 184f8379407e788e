"""``POST /v1/chat/completions``: the pipeline, top to bottom.

auth → parse → route → forward (retries, fallbacks) → relay (JSON or SSE).
"""

from __future__ import annotations

import time

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.auth import authenticate
from gateway.deps import Deps
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.protocol import ChatRequest, read_body
from gateway.providers.client import Upstream
from gateway.streaming import StreamTap, relay

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def chat_completions(request: Request) -> Response:
    started = time.perf_counter()
    deps: Deps = request.state.deps
    await authenticate(request, deps.keys)
    chat = ChatRequest.parse(await read_body(request, deps.settings.max_body_bytes))
    route = deps.router.route(chat.model)
    deps.catalog.check(route[0])
    upstream = await deps.providers.send("/chat/completions", chat, route)
    headers = {"X-CMG-Provider": upstream.target.provider.name}
    if chat.stream and upstream.content_type.startswith("text/event-stream"):
        headers.update(SSE_HEADERS)
        headers["X-Gateway-Overhead-Ms"] = _ms(upstream.started - started)
        return StreamingResponse(
            relay(upstream, StreamTap()),
            status_code=upstream.response.status,
            headers=headers,
            media_type="text/event-stream",
        )
    body = await read_json(upstream)
    upstream_ms = time.perf_counter() - upstream.started
    headers["X-Gateway-Overhead-Ms"] = _ms(time.perf_counter() - started - upstream_ms)
    return Response(body, upstream.response.status, headers, media_type="application/json")


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
