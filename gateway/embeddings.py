"""``POST /v1/embeddings``: routed like chat, relayed unchanged."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import authenticate
from gateway.chat import read_json
from gateway.deps import Deps
from gateway.errors import BadRequest
from gateway.protocol import ChatRequest, parse_object, read_body, require_model


async def embeddings(request: Request) -> Response:
    deps: Deps = request.state.deps
    await authenticate(request, deps.keys)
    raw = await read_body(request, deps.settings.max_body_bytes)
    body = parse_object(raw)
    model = require_model(body)
    if "input" not in body:
        raise BadRequest("you must provide an input parameter", param="input", code="missing_input")
    route = deps.router.route(model)
    deps.catalog.check(route[0])
    upstream = await deps.providers.send("/embeddings", ChatRequest(raw, body, model, False), route)
    payload, _ = await read_json(upstream)
    headers = {"X-CMG-Provider": upstream.target.provider.name}
    return Response(payload, upstream.response.status, headers, media_type="application/json")
