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

from gateway import admin, deps, embeddings, health, memory_api, metrics, models, usage
from gateway.chat import chat_completions
from gateway.errors import GatewayError, error_body, json_error
from gateway.mcp.server import Endpoint as McpEndpoint
from gateway.messages import messages
from gateway.observe import Observe
from gateway.settings import Settings

log = logging.getLogger("cmg.app")
Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with deps.build(settings) as built, mcp.running():
            yield {"deps": built}

    mcp = McpEndpoint()
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/embeddings", embeddings.embeddings, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", models.get_model, methods=["GET"]),
        Route("/v1/memory/items", memory_api.add_items, methods=["POST"]),
        Route("/v1/memory/items/{item_id}", memory_api.get_item, methods=["GET"]),
        Route("/v1/memory/items/{item_id}", memory_api.delete_item, methods=["DELETE"]),
        Route("/v1/memory/search", memory_api.search, methods=["GET"]),
        Route("/v1/memory/threads", memory_api.list_threads, methods=["GET"]),
        Route("/v1/memory/threads/{thread_id:path}", memory_api.get_thread, methods=["GET"]),
        Route("/v1/memory/threads/{thread_id:path}", memory_api.delete_thread, methods=["DELETE"]),
        Route("/v1/memory/users/{user:path}", memory_api.delete_user, methods=["DELETE"]),
        Route("/v1/memory/requests/{request_id}", memory_api.get_injection, methods=["GET"]),
        Route("/v1/usage", usage.usage_endpoint, methods=["GET"]),
        Route("/mcp", mcp, methods=["POST"]),  # stateless: no GET stream, no session to DELETE
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/admin/workspaces", admin.list_workspaces, methods=["GET"]),
        Route("/admin/workspaces", admin.create_workspace, methods=["POST"]),
        Route("/admin/workspaces/{name}", admin.update_workspace, methods=["PATCH"]),
        Route("/admin/usage", admin.usage, methods=["GET"]),
        Route("/admin/health", admin.health, methods=["GET"]),
        Route("/admin/keys", admin.list_keys, methods=["GET"]),
        Route("/admin/keys", admin.create_key, methods=["POST"]),
        Route("/admin/keys/{key_id}/revoke", admin.revoke_key, methods=["POST"]),
        Route("/admin/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
        Route("/admin/keys/{key_id}", admin.update_key, methods=["PATCH"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=dict(_HANDLERS),
    )
    app.router.redirect_slashes = False  # a stray slash is a JSON 404, not a redirect
    hot = Direct(app, {("POST", "/v1/chat/completions"): chat_completions})
    return Observe(hot)  # type: ignore[return-value]


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
