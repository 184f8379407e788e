"""The route table: every endpoint of the gateway, once.

A row is (methods, path, endpoint, label). The app builds its Starlette routes from it, the
observability layer its ``route`` label for metrics, logs and usage (a path matches the row
whose fixed prefix, up to the first ``{``, is the longest that fits), rows marked ``direct`` go
through the fast path, and the test suite's route lists check themselves against it. Adding
an endpoint is one row here plus its handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from core import metrics
from gateway.admin import api as admin
from gateway.admin import health
from gateway.console import pages as console
from gateway.surfaces import embeddings, memory_api, models, responses, usage
from gateway.surfaces.chat import chat_completions
from gateway.surfaces.messages import messages

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Row:
    methods: tuple[str, ...]
    path: str
    endpoint: Any  # a request handler, or an ASGI app (the MCP transport)
    label: str
    direct: bool = False  # served by the fast path (exact method and path, no middleware)

    @property
    def prefix(self) -> str:
        return self.path.split("{", 1)[0]


def table(mcp: Any) -> list[Row]:
    """Every route; ``mcp`` is the app's own MCP endpoint (its transport lives in the lifespan)."""
    return [
        Row(("POST",), "/v1/chat/completions", chat_completions, "chat", direct=True),
        Row(("POST",), "/v1/messages", messages, "messages", direct=True),
        Row(("POST",), "/v1/responses", responses.create_response, "responses", direct=True),
        Row(("GET",), "/v1/responses/{response_id}", responses.get_response, "responses"),
        Row(("DELETE",), "/v1/responses/{response_id}", responses.delete_response, "responses"),
        Row(
            ("GET",),
            "/v1/responses/{response_id}/input_items",
            responses.list_input_items,
            "responses",
        ),
        Row(("POST",), "/v1/embeddings", embeddings.embeddings, "embeddings"),
        Row(("GET",), "/v1/models", models.list_models, "models"),
        Row(("GET",), "/v1/models/{model:path}", models.get_model, "models"),
        Row(("POST",), "/v1/memory/items", memory_api.add_items, "memory"),
        Row(("GET",), "/v1/memory/items/{item_id}", memory_api.get_item, "memory"),
        Row(("DELETE",), "/v1/memory/items/{item_id}", memory_api.delete_item, "memory"),
        Row(("GET",), "/v1/memory/search", memory_api.search, "memory"),
        Row(("GET",), "/v1/memory/threads", memory_api.list_threads, "memory"),
        Row(("GET",), "/v1/memory/threads/{thread_id:path}", memory_api.get_thread, "memory"),
        Row(("DELETE",), "/v1/memory/threads/{thread_id:path}", memory_api.delete_thread, "memory"),
        Row(("DELETE",), "/v1/memory/users/{user:path}", memory_api.delete_user, "memory"),
        Row(("GET",), "/v1/memory/requests/{request_id}", memory_api.get_injection, "memory"),
        Row(("GET",), "/v1/usage", usage.usage_endpoint, "usage"),
        # stateless MCP: no GET stream, no session to DELETE
        Row(("POST",), "/mcp", mcp, "mcp"),
        Row(("GET",), "/healthz", health.healthz, "health"),
        Row(("GET",), "/metrics", metrics.metrics, "metrics"),
        Row(("GET",), "/readyz", health.readyz, "health"),
        Row(("GET",), "/ui", console.overview, "console"),
        Row(("GET",), "/ui/login", console.login_form, "console"),
        Row(("POST",), "/ui/login", console.login, "console"),
        Row(("POST",), "/ui/logout", console.logout, "console"),
        Row(("GET",), "/ui/keys", console.keys, "console"),
        Row(("POST",), "/ui/keys", console.create_key, "console"),
        Row(("POST",), "/ui/keys/revoke", console.revoke_key, "console"),
        Row(("POST",), "/ui/keys/limits", console.key_limits, "console"),
        Row(("GET",), "/ui/settings", console.settings_page, "console"),
        Row(("POST",), "/ui/settings", console.save_settings, "console"),
        Row(("GET",), "/ui/memory", console.memory, "console"),
        Row(("GET",), "/ui/thread", console.thread, "console"),
        Row(("POST",), "/ui/thread/delete", console.delete_thread, "console"),
        Row(("POST",), "/ui/memory/forget-user", console.forget_user, "console"),
        Row(("GET",), "/ui/search", console.search, "console"),
        Row(("GET",), "/ui/request", console.request_view, "console"),
        Row(("GET",), "/ui/static/console.css", console.stylesheet, "console"),
        Row(("GET",), "/admin/workspaces", admin.list_workspaces, "admin"),
        Row(("POST",), "/admin/workspaces", admin.create_workspace, "admin"),
        Row(("PATCH",), "/admin/workspaces/{name}", admin.update_workspace, "admin"),
        Row(("GET",), "/admin/usage", admin.usage, "admin"),
        Row(("GET",), "/admin/health", admin.health, "admin"),
        Row(("GET",), "/admin/keys", admin.list_keys, "admin"),
        Row(("POST",), "/admin/keys", admin.create_key, "admin"),
        Row(("POST",), "/admin/keys/{key_id}/revoke", admin.revoke_key, "admin"),
        Row(("DELETE",), "/admin/keys/{key_id}", admin.revoke_key, "admin"),
        Row(("PATCH",), "/admin/keys/{key_id}", admin.update_key, "admin"),
    ]


def labels(rows: Sequence[Row]) -> tuple[tuple[str, str], ...]:
    """(path prefix, label), longest prefix first, for labelling a request by its path."""
    seen: dict[str, str] = {}
    for row in rows:
        seen.setdefault(row.prefix, row.label)
    return tuple(sorted(seen.items(), key=lambda item: -len(item[0])))
