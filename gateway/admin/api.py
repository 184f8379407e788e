"""``/admin/*``: workspaces and keys, behind the master key (``CMG_MASTER_KEY``)."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from core.errors import BadRequest, Forbidden, Unauthorized, json_response
from gateway.deps import Deps
from gateway.services import workspaces
from gateway.services.auth import bearer
from gateway.services.protocol import parse_object, read_body
from gateway.services.usage_report import period, report


def _admin(request: Request) -> Deps:
    deps: Deps = request.state.deps
    master = deps.settings.master_key
    if not master:
        raise Forbidden("the admin API is disabled: set CMG_MASTER_KEY", code="admin_disabled")
    if not hmac.compare_digest(bearer(request).encode(), master.encode()):
        raise Unauthorized("invalid master key", code="invalid_api_key")
    return deps


async def _body(request: Request, deps: Deps) -> dict[str, Any]:
    return parse_object(await read_body(request, deps.settings.max_body_bytes))


def _string(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"{name} must be a non-empty string", param=name, code="invalid_type")
    return value


async def list_workspaces(request: Request) -> Response:
    deps = _admin(request)
    async with deps.sessions() as session:
        rows = await workspaces.list_workspaces(session)
    data = [_workspace_json(w) for w in rows]
    return json_response({"object": "list", "data": data})


async def create_workspace(request: Request) -> Response:
    deps = _admin(request)
    body = await _body(request, deps)
    async with deps.sessions.begin() as session:
        workspace = await workspaces.create_workspace(session, _string(body, "name"))
    return json_response(_workspace_json(workspace), 201)


async def update_workspace(request: Request) -> Response:
    deps = _admin(request)
    body = await _body(request, deps)
    settings = body.get("settings")
    if not isinstance(settings, dict):
        raise BadRequest("settings must be an object", param="settings", code="invalid_type")
    async with deps.sessions.begin() as session:
        workspace = await workspaces.update_settings(session, request.path_params["name"], settings)
    deps.keys.forget()  # cached callers carry the old settings
    return json_response(_workspace_json(workspace))


def _workspace_json(workspace: Any) -> dict[str, Any]:
    return {
        "id": str(workspace.id),
        "object": "workspace",
        "name": workspace.name,
        "settings": workspace.settings or {},
    }


async def list_keys(request: Request) -> Response:
    deps = _admin(request)
    async with deps.sessions() as session:
        keys = await workspaces.list_keys(session, request.query_params.get("workspace"))
    return json_response({"object": "list", "data": [k.as_json() for k in keys]})


async def create_key(request: Request) -> Response:
    deps = _admin(request)
    body = await _body(request, deps)
    days = body.get("expires_in_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)):
        raise BadRequest("expires_in_days must be a number", param="expires_in_days")
    async with deps.sessions.begin() as session:
        secret, info = await workspaces.create_key(
            session,
            _string(body, "workspace"),
            name=_string(body, "name", required=False),
            expires_in_days=days,
            rpm_limit=body.get("rpm_limit"),
            tpm_limit=body.get("tpm_limit"),
        )
    return json_response({**info.as_json(), "key": secret}, 201)


async def update_key(request: Request) -> Response:
    """``PATCH /admin/keys/{id}`` with ``rpm_limit`` / ``tpm_limit`` (null removes a limit)."""
    deps = _admin(request)
    body = await _body(request, deps)
    async with deps.sessions.begin() as session:
        info = await workspaces.set_key_limits(
            session,
            request.path_params["key_id"],
            rpm_limit=body.get("rpm_limit"),
            tpm_limit=body.get("tpm_limit"),
        )
    deps.keys.forget()
    return json_response(info.as_json())


async def revoke_key(request: Request) -> Response:
    deps = _admin(request)
    async with deps.sessions.begin() as session:
        info = await workspaces.revoke_key(session, request.path_params["key_id"])
    deps.keys.forget()
    return json_response(info.as_json())


async def usage(request: Request) -> Response:
    """``GET /admin/usage?workspace=NAME``: any workspace (or all), by day, key or model."""
    deps = _admin(request)
    start, end, group_by = period(request.query_params)
    name = request.query_params.get("workspace")
    async with deps.sessions() as session:
        workspace_id = str((await workspaces.get_workspace(session, name)).id) if name else None
        data = await report(
            session, workspace_id=workspace_id, start=start, end=end, group_by=group_by
        )
    return json_response({"object": "list", "workspace": name, "start": str(start), "end": str(end),
                  "group_by": ",".join(group_by), "data": data})  # fmt: skip


async def health(request: Request) -> Response:
    """``GET /admin/health``: each dependency's state and latency, and background backlogs."""
    from gateway.admin.health import checks

    deps = _admin(request)
    return json_response(await checks(deps, detailed=True))
