"""``GET /v1/models`` and ``GET /v1/models/{id}``: the synced catalog, OpenAI-shaped."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import authenticate
from gateway.deps import Deps


async def list_models(request: Request) -> Response:
    deps: Deps = request.state.deps
    await authenticate(request, deps.keys)
    return _json({"object": "list", "data": deps.catalog.list()})


async def get_model(request: Request) -> Response:
    deps: Deps = request.state.deps
    await authenticate(request, deps.keys)
    return _json(deps.catalog.get(request.path_params["model"]))


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
