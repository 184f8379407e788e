"""The memory API (workspace key): add, search, inspect and delete what the workspace remembers.

Every query filters on the caller's workspace; an id of another workspace is simply not found.
Lists are OpenAI-style (``object: list``, ``data``, ``first_id``, ``last_id``, ``has_more``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from core.errors import BadRequest, NotFound, json_response
from gateway.deps import Deps
from gateway.services.admission import admit
from gateway.services.auth import Caller, authenticate
from gateway.services.memory_scope import THREAD_ID
from gateway.services.protocol import ROLES, read_body
from memory import items, store
from memory.recall import Filters
from memory.schema import MemoryItem

_KINDS = ("note", "fact", "message")
_MAX_BATCH = 1000
# How far ahead of this server's clock a client's created_at may be (clock skew, not the future).
_FUTURE_SKEW = timedelta(minutes=5)


async def _caller(request: Request, *, budget: bool = True) -> tuple[Deps, Caller]:
    """The caller, charged one request against its rate limits (deletes skip the budget)."""
    deps: Deps = request.state.deps
    caller = await authenticate(request, deps.keys)
    await admit(deps, caller, budget=budget)
    return deps, caller


async def add_items(request: Request) -> Response:
    deps, caller = await _caller(request)
    body = _items_body(await read_body(request, deps.settings.max_body_bytes))
    new = [parse_item(entry, f"items[{i}]") for i, entry in enumerate(body)]
    wait = _wait_seconds(request.query_params.get("wait", ""), deps.settings.memory_wait_seconds)
    pii = bool(caller.settings.get("redact_pii", False))
    async with deps.sessions.begin() as session:
        ids = await items.add(session, caller.workspace_id, new, pii=pii)
    deps.memory.kick()
    data = [{"id": str(i), "object": "memory.item"} for i in ids]
    if wait:
        pending = await _wait_embedded(deps, caller, ids, wait)
        if not pending:
            return json_response({"object": "list", "data": data, "searchable": True}, 200)
        message = (
            f"stored; {pending} of {len(ids)} items were not embedded within {wait:g} s "
            "(they become searchable when the workers catch up)"
        )
        late = {"searchable": False, "pending": pending, "message": message}
        return json_response({"object": "list", "data": data, **late}, 202)
    return json_response({"object": "list", "data": data, "searchable": False}, 201)


def _items_body(raw: bytes) -> list[Any]:
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise BadRequest("could not parse the request body as JSON", code="invalid_json") from exc
    items = parsed.get("items") if isinstance(parsed, dict) else parsed
    if not isinstance(items, list) or not items:
        raise BadRequest("items must be a non-empty array", param="items", code="invalid_type")
    if len(items) > _MAX_BATCH:
        raise BadRequest(f"at most {_MAX_BATCH} items per request", param="items")
    return items


def parse_item(entry: Any, param: str) -> store.NewItem:
    if not isinstance(entry, dict):
        raise BadRequest(f"{param} must be an object", param=param, code="invalid_type")
    content = entry.get("content")
    if not isinstance(content, str) or not content.strip():
        raise BadRequest(f"{param}.content must be a non-empty string", param=f"{param}.content")
    kind = entry.get("kind", "note")
    if kind not in _KINDS:
        raise BadRequest(f"{param}.kind must be one of {', '.join(_KINDS)}", param=f"{param}.kind")
    metadata = entry.get("metadata", {})
    if not isinstance(metadata, dict) or not _storable(metadata):
        raise BadRequest(
            f"{param}.metadata must be an object (without NUL characters, at most 200 levels deep)",
            param=f"{param}.metadata",
        )
    return store.NewItem(
        content=content,
        kind=kind,
        role=_role(entry, param),
        thread_id=_thread_id(entry, param),
        end_user=_optional_str(entry, "user", param),
        metadata=metadata,
        created_at=_created_at(entry.get("created_at"), f"{param}.created_at"),
    )


# role and thread_id reach the prompt in each recalled item's header: only known values pass.
def _role(entry: dict[str, Any], param: str) -> str | None:
    role = entry.get("role")
    if role is not None and (not isinstance(role, str) or role not in ROLES):
        raise BadRequest(
            f"{param}.role must be one of {', '.join(sorted(ROLES))}",
            param=f"{param}.role",
            code="invalid_value",
        )
    return role


def _thread_id(entry: dict[str, Any], param: str) -> str | None:
    thread = entry.get("thread_id")
    if thread is not None and (not isinstance(thread, str) or not THREAD_ID.match(thread)):
        raise BadRequest(
            f"{param}.thread_id must be 1-200 characters of letters, digits and ._:-/@ "
            "(as X-Thread-Id)",
            param=f"{param}.thread_id",
            code="invalid_value",
        )
    return thread


def _created_at(value: Any, param: str) -> datetime | None:
    created = _timestamp(value, param)
    if created is not None and created > datetime.now(UTC) + _FUTURE_SKEW:
        raise BadRequest(
            f"{param} is in the future (more than {_FUTURE_SKEW.seconds // 60} minutes ahead "
            "of the server's clock)",
            param=param,
            code="invalid_value",
        )
    return created


def _optional_str(entry: dict[str, Any], name: str, param: str) -> str | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256 or "\x00" in value:
        raise BadRequest(
            f"{param}.{name} must be a string of 1-256 characters", param=f"{param}.{name}"
        )
    return value


def _storable(value: Any) -> bool:
    """JSON PostgreSQL can store and orjson can write back (no NUL, bounded depth)."""
    try:
        return b"\\u0000" not in orjson.dumps(value)
    except TypeError:  # orjson writes fewer levels than it reads
        return False


def _timestamp(value: Any, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value).astimezone()
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.astimezone()
    except (ValueError, OverflowError, OSError) as exc:
        raise BadRequest(f"{param} is not a valid timestamp", param=param) from exc
    raise BadRequest(f"{param} must be a unix time or an ISO 8601 string", param=param)


def _wait_seconds(raw: str, longest: float) -> float:
    """``wait=true`` waits the longest allowed; ``wait=N`` up to N seconds, never longer."""
    if raw.lower() in ("1", "true", "yes"):
        return longest
    if raw.lower() in ("", "0", "false", "no"):
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise BadRequest("wait must be true, false or a number of seconds", param="wait")
    return min(seconds, longest)


async def _wait_embedded(deps: Deps, caller: Caller, ids: list[uuid.UUID], wait: float) -> int:
    """Items of ``ids`` still without a vector once they all have one or ``wait`` s passed."""
    deadline = time.monotonic() + wait
    pause = 0.05  # backs off to 0.5 s: a 30 s wait is ~65 queries instead of 600
    while True:
        async with deps.sessions() as session:
            pending = await session.scalar(
                select(func.count()).where(
                    MemoryItem.workspace_id == uuid.UUID(caller.workspace_id),
                    MemoryItem.id.in_(ids),
                    MemoryItem.embedding.is_(None),
                )
            )
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            return int(pending or 0)
        deps.memory.kick()
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 1.5, 0.5)


async def search(request: Request) -> Response:
    deps, caller = await _caller(request)
    params = request.query_params
    query = params.get("q", "")
    if not query.strip():
        raise BadRequest("q must be a non-empty query", param="q")
    k = _int(params.get("k", "10"), "k", 1, 100)
    legs = {"hybrid": ("vector", "lexical"), "vector": ("vector",), "lexical": ("lexical",)}
    mode = params.get("mode", "hybrid")
    if mode not in legs:
        raise BadRequest("mode must be hybrid, vector or lexical", param="mode")
    filters = Filters(
        caller.workspace_id, params.get("user") or None, params.get("thread_id") or None
    )
    explain = params.get("explain", "").lower() in ("1", "true", "yes")
    hits = await deps.memory.search(
        filters, query[:4000].replace("\x00", ""), k, legs=legs[mode], explain=explain
    )
    return json_response({"object": "list", "data": [h.as_json() for h in hits]})


async def get_item(request: Request) -> Response:
    deps, caller = await _caller(request)
    async with deps.sessions() as session:
        item = await _item(session, caller, request.path_params["item_id"])
    return json_response(items.item_json(item))


async def delete_item(request: Request) -> Response:
    deps, caller = await _caller(request, budget=False)
    raw_id = request.path_params["item_id"]
    async with deps.sessions.begin() as session:
        if not await items.forget_item(session, caller.workspace_id, raw_id):
            raise NotFound(f"no memory item {raw_id!r}", param="item_id", code="not_found")
    return json_response(
        {"id": str(items.parse_id(raw_id)), "object": "memory.item.deleted", "deleted": True}
    )


async def list_threads(request: Request) -> Response:
    deps, caller = await _caller(request)
    limit = _int(request.query_params.get("limit", "20"), "limit", 1, 100)
    after = request.query_params.get("after")
    user = request.query_params.get("user")
    async with deps.sessions() as session:
        page = await items.list_threads(
            session, caller.workspace_id, user=user, limit=limit, after=after
        )
    if page is None:
        raise BadRequest("after is not a thread of this workspace", param="after")
    threads = page.threads
    return json_response(
        {
            "object": "list",
            "data": [items.thread_json(t) for t in threads],
            "first_id": threads[0].id if threads else None,
            "last_id": threads[-1].id if threads else None,
            "has_more": page.has_more,
        }
    )


async def get_thread(request: Request) -> Response:
    deps, caller = await _caller(request)
    thread_id = request.path_params["thread_id"]
    async with deps.sessions() as session:
        body = await items.get_thread(session, caller.workspace_id, thread_id)
    if body is None:
        raise NotFound(f"no thread {thread_id!r}", param="thread_id", code="not_found")
    return json_response(body)


async def delete_thread(request: Request) -> Response:
    deps, caller = await _caller(request, budget=False)
    thread_id = request.path_params["thread_id"]
    async with deps.sessions.begin() as session:
        deleted = await items.forget_thread(session, caller.workspace_id, thread_id)
    if deleted is None:
        raise NotFound(f"no thread {thread_id!r}", param="thread_id", code="not_found")
    return json_response(
        {"id": thread_id, "object": "memory.thread.deleted", "deleted": True, "items": deleted}
    )


async def delete_user(request: Request) -> Response:
    deps, caller = await _caller(request, budget=False)
    user = request.path_params["user"]
    async with deps.sessions.begin() as session:
        deleted = await items.forget_user(session, caller.workspace_id, user)
    return json_response(
        {"user": user, "object": "memory.user.deleted", "deleted": True, "items": deleted}
    )


async def get_injection(request: Request) -> Response:
    deps, caller = await _caller(request)
    request_id = request.path_params["request_id"]
    async with deps.sessions() as session:
        body = await items.injection(session, caller.workspace_id, request_id)
    if body is None:
        raise NotFound(
            f"no memory record for request {request_id!r}", param="request_id", code="not_found"
        )
    return json_response(body)


async def _item(session: AsyncSession, caller: Caller, raw_id: str) -> MemoryItem:
    item = await items.get_item(session, caller.workspace_id, raw_id)
    if item is None:
        raise NotFound(f"no memory item {raw_id!r}", param="item_id", code="not_found")
    return item


def _int(raw: str, name: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer", param=name) from exc
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", param=name)
    return value
