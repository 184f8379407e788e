"""``GET /v1/models`` and ``GET /v1/models/{id}``: the synced catalog, OpenAI-shaped."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from core.errors import json_response
from gateway.deps import Deps
from gateway.services.auth import authenticate


async def list_models(request: Request) -> Response:
    deps: Deps = request.state.deps
    await authenticate(request, deps.keys)
    return json_response({"object": "list", "data": deps.catalog.list()})


async def get_model(request: Request) -> Response:
    deps: Deps = request.state.deps
    await authenticate(request, deps.keys)
    return json_response(deps.catalog.get(request.path_params["model"]))
