"""The ASGI application: routes, middleware, error handlers, lifespan. No work at import time."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.exc import DataError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import admin, deps, embeddings, health, memory_api, metrics, models, usage
from gateway.chat import chat_completions
from gateway.errors import GatewayError, error_body, json_error
from gateway.observe import Observe
from gateway.settings import Settings

log = logging.getLogger("cmg.app")


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with deps.build(settings) as built:
            yield {"deps": built}

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
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
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            DataError: _data_error,
            Exception: _unexpected,
        },
    )
    app.router.redirect_slashes = False  # a stray slash is a JSON 404, not a redirect
    return Observe(app, log_json=settings.log_format == "json")  # type: ignore[return-value]


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


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = error_body("the gateway hit an internal error", "server_error", None, "internal_error")
    return json_error(500, body)
