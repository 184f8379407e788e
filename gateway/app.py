"""The ASGI application: routes, middleware, error handlers, lifespan. No work at import time."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import sqlalchemy.exc
from sqlalchemy.exc import DataError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from core.errors import GatewayError, error_body, json_error
from core.settings import Settings
from gateway import deps
from gateway.routes import labels, table
from gateway.services.observe import Observe
from gateway.surfaces.mcp.server import Endpoint as McpEndpoint

log = logging.getLogger("cmg.app")
Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with deps.build(settings) as built, mcp.running():
            yield {"deps": built}

    mcp = McpEndpoint()
    rows = table(mcp)
    routes = [Route(row.path, row.endpoint, methods=list(row.methods)) for row in rows]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=dict(_HANDLERS),
    )
    app.router.redirect_slashes = False  # a stray slash is a JSON 404, not a redirect
    direct = {(row.methods[0], row.path): row.endpoint for row in rows if row.direct}
    return Observe(Direct(app, direct), labels(rows))  # type: ignore[return-value]


class Direct:
    """The hot routes, served without Starlette's middleware stack and route matching.

    Per request Starlette walks two middlewares, an exception-handler wrapper and a regex per
    route before reaching the endpoint (about a tenth of the gateway's CPU at 1,500 req/s);
    an exact (method, path) hit goes straight to the endpoint here, with the same error
    handlers. Everything else falls through to the Starlette app.
    """

    def __init__(self, app: Starlette, exact: dict[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self.exact = exact
        assert all(  # a direct route is a Starlette route too (405s, listings, tests)
            any(r.path == path and method in (r.methods or ()) for r in app.routes)  # type: ignore[attr-defined]
            for method, path in exact
        )

    @property
    def routes(self) -> list[BaseRoute]:
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.exact.get((scope.get("method", ""), scope.get("path", "")))
        if endpoint is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:  # Starlette's handlers, ServerErrorMiddleware's backstop last
            handler = next(h for kind, h in _HANDLERS if isinstance(exc, kind))
            response = await handler(request, exc)
        await response(scope, receive, send)


def app_from_env() -> Starlette:
    """uvicorn factory for multi-worker serving: settings come from the environment."""
    return create_app(Settings.from_env())


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    obs = request.scope.get("state", {}).get("obs")
    if obs is not None:
        obs.error_code = exc.code
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return json_error(exc.status_code, error_body(message, "invalid_request_error", None, code))


async def _data_error(request: Request, exc: Exception) -> Response:
    """A value the database refuses (a backstop: inputs are validated before they get there)."""
    body = error_body(
        "a value in the request cannot be stored (invalid characters or out of range)",
        "invalid_request_error",
        None,
        "invalid_value",
    )
    return json_error(400, body)


async def _database_down(request: Request, exc: Exception) -> Response:
    """The database went away mid-request (restart, failover): retryable, not a bug."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                type(exc).__name__)  # fmt: skip
    body = error_body(
        "the database is unavailable; retry shortly", "server_error", None, "database_unavailable"
    )
    return json_error(503, body)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = error_body("the gateway hit an internal error", "server_error", None, "internal_error")
    return json_error(500, body)


Handler = Callable[[Request, Exception], Awaitable[Response]]
# Most specific first: the Direct routes take the first match, Starlette the nearest in the MRO.
_HANDLERS: list[tuple[type[Exception], Handler]] = [
    (GatewayError, _gateway_error),
    (HTTPException, _http_error),
    (DataError, _data_error),
    (psycopg.DataError, _data_error),
    (sqlalchemy.exc.OperationalError, _database_down),
    (sqlalchemy.exc.InterfaceError, _database_down),
    (psycopg.OperationalError, _database_down),
    (Exception, _unexpected),
]
