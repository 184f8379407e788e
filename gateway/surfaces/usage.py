"""``GET /v1/usage``: what the caller's own workspace used, from the daily rollup."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.services.auth import authenticate
from gateway.services.usage_report import period, report


async def usage_endpoint(request: Request) -> Response:
    """``GET /v1/usage``: the caller's workspace, by day, key or model."""
    deps = request.state.deps
    caller = await authenticate(request, deps.keys)
    start, end, group_by = period(request.query_params)
    async with deps.sessions() as session:
        data = await report(
            session, workspace_id=caller.workspace_id, start=start, end=end, group_by=group_by
        )
    body = {"object": "list", "workspace": caller.workspace, "start": str(start), "end": str(end),
            "group_by": ",".join(group_by), "data": data}  # fmt: skip
    return Response(orjson.dumps(body), media_type="application/json")
