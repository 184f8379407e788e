"""The MCP server: memory tools over Streamable HTTP, mounted in the gateway's own app.

An agent (Claude Desktop or Code, Cursor, the OpenAI Agents SDK) reaches the same workspace
memory that chat completions recall from, on purpose: search it, add to it, list threads and
forget. The tools call the services behind the HTTP memory API (``Memory.search``,
``memory/items.py``) and nothing else, so both surfaces answer alike.

- Stateless mode: every POST carries its whole exchange, so any replica answers and nothing is
  kept between requests (no session ids to route on behind nginx).
- Auth happens at the HTTP layer, before the MCP machinery sees a byte: an unknown, revoked or
  expired key gets the gateway's usual 401. The caller then rides in a context variable to the
  tools, which run in tasks started from this request.
- Each tool call is charged against the key's rate limits and the workspace budget (the same
  ``admit`` as every other route) and counted in usage under the route ``mcp``; listing tools
  and the protocol handshake are free.
- Results are capped: at most 50 hits, each content cut at 4,000 characters with a marker.
- DNS-rebinding protection (a browser defence) is off: the endpoint takes no cookies, only a
  bearer key, which a rebinding page cannot supply.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from core.errors import GatewayError
from gateway.deps import Deps
from gateway.services.admission import admit
from gateway.services.auth import Caller, authenticate
from gateway.services.observe import observation
from gateway.services.usage import Usage
from gateway.surfaces.memory_api import parse_item
from memory import items
from memory.recall import Filters

MAX_K = 50
MAX_CONTENT = 4000
TRUNCATED = " …[truncated]"


@dataclass(frozen=True)
class _Call:
    deps: Deps
    caller: Caller
    request_id: str


_current: contextvars.ContextVar[_Call] = contextvars.ContextVar("cmg_mcp_call")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CONTENT else text[:MAX_CONTENT] + TRUNCATED


async def _charged(tool: str) -> _Call:
    """The caller of this request, charged one call; limits and budget errors become tool errors."""
    call = _current.get()
    started = time.perf_counter()
    try:
        await admit(call.deps, call.caller)
    except GatewayError as exc:
        raise ToolError(f"{exc.code}: {exc.message}") from exc
    call.deps.usage.add(
        Usage(
            request_id=f"{call.request_id}:{uuid.uuid4().hex[:8]}",
            workspace_id=call.caller.workspace_id, key_id=call.caller.key_id,
            model=f"mcp:{tool}", provider=None, status=200,
            prompt_tokens=0, completion_tokens=0, cached_tokens=0, estimated=False, cost_usd=0.0,
            latency_ms=(time.perf_counter() - started) * 1000, at=datetime.now(UTC), route="mcp",
        )
    )  # fmt: skip
    return call


def _hit(h: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "kind", "role", "thread_id", "user", "created_at", "score")
    return {**{k: h.get(k) for k in keep}, "content": _cut(str(h.get("content", "")))}


async def search_memory(
    query: Annotated[str, Field(min_length=1, max_length=4000, description="What to look for")],
    k: Annotated[int, Field(ge=1, le=MAX_K, description="How many hits")] = 10,
    user: Annotated[str | None, Field(max_length=256, description="Only this end user's")] = None,
    thread_id: Annotated[str | None, Field(max_length=256)] = None,
) -> dict[str, Any]:
    call = await _charged("search_memory")
    if not query.strip():
        raise ToolError("query must not be blank")
    filters = Filters(call.caller.workspace_id, user or None, thread_id or None)
    hits = await call.deps.memory.search(filters, query.replace("\x00", ""), k)
    return {"hits": [_hit(h.as_json()) for h in hits]}


async def add_memory(
    content: Annotated[str, Field(min_length=1, max_length=100_000)],
    user: Annotated[str | None, Field(max_length=256)] = None,
    thread_id: Annotated[str | None, Field(max_length=256)] = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    call = await _charged("add_memory")
    entry: dict[str, Any] = {"content": content, "kind": "note"}
    for name, value in (("user", user), ("thread_id", thread_id), ("metadata", metadata)):
        if value is not None:
            entry[name] = value
    try:
        new = parse_item(entry, "arguments")
    except GatewayError as exc:
        raise ToolError(exc.message) from exc
    pii = bool(call.caller.settings.get("redact_pii", False))
    async with call.deps.sessions.begin() as session:
        ids = await items.add(session, call.caller.workspace_id, [new], pii=pii)
    call.deps.memory.kick()
    return {"id": str(ids[0]), "searchable": False}


async def list_threads(
    user: Annotated[str | None, Field(max_length=256)] = None,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    call = await _charged("list_threads")
    async with call.deps.sessions() as session:
        page = await items.list_threads(session, call.caller.workspace_id, user=user, limit=limit)
    assert page is not None  # no cursor given
    return {"threads": [items.thread_json(t) for t in page.threads], "has_more": page.has_more}


async def get_thread(
    thread_id: Annotated[str, Field(min_length=1, max_length=256)],
) -> dict[str, Any]:
    call = await _charged("get_thread")
    async with call.deps.sessions() as session:
        body = await items.get_thread(session, call.caller.workspace_id, thread_id)
    if body is None:
        raise ToolError(f"no thread {thread_id!r} in this workspace")
    for group in ("messages", "notes"):
        body[group] = [{**i, "content": _cut(i["content"])} for i in body[group]]
    return body


async def forget(
    item_id: Annotated[str | None, Field(max_length=64)] = None,
    thread_id: Annotated[str | None, Field(max_length=256)] = None,
    user: Annotated[str | None, Field(max_length=256)] = None,
) -> dict[str, Any]:
    given = [
        (n, v) for n, v in (("item_id", item_id), ("thread_id", thread_id), ("user", user)) if v
    ]
    if len(given) != 1:
        raise ToolError("give exactly one of item_id, thread_id or user")
    call = _current.get()  # deleting is never refused for budget, as on the HTTP API
    try:
        await admit(call.deps, call.caller, budget=False)
    except GatewayError as exc:
        raise ToolError(f"{exc.code}: {exc.message}") from exc
    name, value = given[0]
    ws = call.caller.workspace_id
    async with call.deps.sessions.begin() as session:
        if name == "item_id":
            if not await items.forget_item(session, ws, value):
                raise ToolError(f"no memory item {value!r} in this workspace")
            return {"deleted": {"item_id": value}, "items": 1}
        if name == "thread_id":
            count = await items.forget_thread(session, ws, value)
            if count is None:
                raise ToolError(f"no thread {value!r} in this workspace")
            return {"deleted": {"thread_id": value}, "items": count}
        return {"deleted": {"user": value}, "items": await items.forget_user(session, ws, value)}


async def thread_summary(thread_id: str) -> str:
    call = _current.get()
    async with call.deps.sessions() as session:
        body = await items.get_thread(session, call.caller.workspace_id, thread_id)
    if body is None:
        raise ToolError(f"no thread {thread_id!r} in this workspace")
    summary = body.get("summary")
    return str(summary["content"]) if summary else ""


def _server() -> MCPServer[Any]:
    mcp: MCPServer[Any] = MCPServer(
        name="context-memory-gateway",
        instructions=(
            "Long-term memory of this workspace: search it before answering questions about "
            "earlier conversations, add durable facts the user states, forget what the user "
            "asks to forget."
        ),
    )
    mcp.add_tool(
        search_memory,
        description="Search the workspace's memory (the same recall as chat completions).",
    )
    mcp.add_tool(
        add_memory,
        description="Remember a piece of text; searchable once embedded (about a second).",
    )
    mcp.add_tool(list_threads, description="The workspace's conversation threads, newest first.")
    mcp.add_tool(
        get_thread, description="One thread: its messages, notes and facts, and its summary."
    )
    mcp.add_tool(
        forget,
        description=(
            "Forget one item, a whole thread or everything of an end user (exactly one of "
            "item_id, thread_id, user); summaries and facts derived from it go too."
        ),
    )
    mcp.resource(
        "memory://threads/{thread_id}/summary",
        mime_type="text/plain",
        description="The latest summary of a thread (empty when it has none yet).",
    )(thread_summary)
    # Creates the session manager (one per app: its run() context can be entered once).
    mcp.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return mcp


class Endpoint:
    """``/mcp``: authenticate the workspace key, then hand the request to the MCP transport.

    ``running()`` belongs in the app's lifespan: the transport's task group lives there.
    """

    def __init__(self) -> None:
        self.server = _server()

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.server.session_manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        deps: Deps = request.state.deps
        caller = await authenticate(request, deps.keys)  # a GatewayError -> the usual 401
        obs = observation(request)
        obs.workspace, obs.key_id = caller.workspace, caller.key_id
        token = _current.set(_Call(deps, caller, obs.request_id))
        try:
            await self.server.session_manager.handle_request(scope, receive, send)
        finally:
            _current.reset(token)
