"""The *plan memory* stage: which thread, end user and memory mode a request belongs to.

- mode: ``X-Memory: on|off|read|write``, else the workspace's ``memory`` setting, else
  ``CMG_MEMORY_DEFAULT``;
- end user: the OpenAI ``user`` field, else ``X-Memory-User``; with one, recall never
  crosses end users;
- thread: ``X-Thread-Id``, else a stable fingerprint of (workspace, end user, system prompt,
  first user message), so plain OpenAI clients get threads for free. Without an end user the
  API key id stands in for one: anonymous clients of different keys never share a thread. Only
  what every turn of a conversation resends (the opening) can go in, or a client resending its
  history would land in a new thread each turn.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from core.errors import BadRequest
from gateway.services.auth import Caller
from gateway.services.protocol import ChatRequest
from memory.store import Scope, message_text

MODES = ("on", "off", "read", "write")
THREAD_ID = re.compile(r"[A-Za-z0-9._:\-/@]{1,200}\Z")


@dataclass(frozen=True)
class Plan:
    mode: str
    scope: Scope

    @property
    def read(self) -> bool:
        return self.mode in ("on", "read")

    @property
    def write(self) -> bool:
        return self.mode in ("on", "write")

    @property
    def active(self) -> bool:
        return self.mode != "off"


def memory_mode(request: Request, caller: Caller, default: str) -> str:
    header = request.headers.get("x-memory")
    if header is not None:
        mode = header.strip().lower()
        if mode not in MODES:
            raise BadRequest(
                f"X-Memory must be one of {', '.join(MODES)}",
                param="X-Memory",
                code="invalid_value",
            )
        return mode
    configured = caller.settings.get("memory")
    return configured if configured in MODES else default


def end_user(request: Request, body: dict[str, Any]) -> str | None:
    user = body.get("user")
    if user is None:
        user = request.headers.get("x-memory-user")
    if user is None or user == "":
        return None
    if not isinstance(user, str) or len(user) > 256 or "\x00" in user:
        raise BadRequest("user must be a string of at most 256 characters", param="user")
    return user


def plan(request: Request, caller: Caller, chat: ChatRequest, default_mode: str) -> Plan:
    mode = memory_mode(request, caller, default_mode)
    user = end_user(request, chat.body) if mode != "off" else None
    thread = None
    if mode != "off":
        thread = request.headers.get("x-thread-id") or fingerprint(
            caller.workspace_id, user, chat.messages, key_id=caller.key_id
        )
        if not THREAD_ID.match(thread):
            raise BadRequest(
                "X-Thread-Id must be 1-200 characters of letters, digits and ._:-/@",
                param="X-Thread-Id",
                code="invalid_value",
            )
    pii = bool(caller.settings.get("redact_pii", False))
    facts = bool(caller.settings.get("facts", False))
    return Plan(mode, Scope(caller.workspace_id, thread, user, pii, facts))


def fingerprint(
    workspace_id: str, user: str | None, messages: list[Any], *, key_id: str | None = None
) -> str:
    system = "\n".join(
        message_text(m)
        for m in messages
        if isinstance(m, dict) and m.get("role") in ("system", "developer")
    )
    first_user = next(
        (message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"), ""
    )
    if user is None:  # per key; a JSON preimage (starts with "[") never equals a per-user one
        preimage = orjson.dumps(["anonymous", workspace_id, key_id, system, first_user])
    else:  # per (workspace, user), as it always was
        preimage = "\x1f".join((workspace_id, user, system, first_user)).encode(
            "utf-8", "surrogatepass"
        )
    digest = hashlib.sha256(preimage).hexdigest()
    return "fp_" + digest[:32]
