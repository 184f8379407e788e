"""The *auth* stage: the API key → the calling workspace.

Keys are looked up by SHA-256 and cached in-process, so a request costs no database round-trip.
A cached entry lives until a change notice (``gateway/services/notices.py``) drops the cache: a
key revoked or changed anywhere stops working on every replica within milliseconds. Only while
the notice channel is down do entries expire after ``auth_cache_seconds`` instead. When the
database is unreachable, a key seen before keeps working from its (stale) cache entry; an
unknown key then gets 503, not 401.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.requests import Request

from core.errors import ServiceUnavailable, Unauthorized
from gateway.services.workspaces import KeyRecord, hash_secret

_NEGATIVE_TTL = 5.0
_MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Caller:
    key_id: str
    workspace_id: str
    workspace: str
    settings: dict[str, Any]
    rpm_limit: int | None = None
    tpm_limit: int | None = None


Lookup = Callable[[str], Awaitable[KeyRecord | None]]


class KeyCache:
    """Key hash → record. ``live()`` says whether change notices are arriving (then the
    lifetime does not apply); ``forget()`` is what a notice calls."""

    def __init__(self, lookup: Lookup, ttl: float, live: Callable[[], bool] = lambda: False):
        self._lookup = lookup
        self._ttl = ttl
        self._live = live
        self._entries: dict[str, tuple[float, KeyRecord | None]] = {}
        self._generation = 0

    async def resolve(self, secret: str) -> KeyRecord | None:
        key_hash = hash_secret(secret)
        now = time.monotonic()
        hit = self._entries.get(key_hash)
        if hit is not None and self._fresh(hit, now):
            return hit[1]
        generation = self._generation
        try:
            record = await self._lookup(key_hash)
        except (OperationalError, DBAPIError, OSError) as exc:
            if hit is not None and hit[1] is not None:
                return hit[1]  # stale but known: keep serving while the database is away
            raise ServiceUnavailable("the key store is unavailable; retry shortly") from exc
        if generation != self._generation:
            return record  # a notice came during the lookup: this row may predate it
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[key_hash] = (now, record)
        return record

    def _fresh(self, hit: tuple[float, KeyRecord | None], now: float) -> bool:
        age = now - hit[0]
        if hit[1] is None:  # unknown keys: short-lived whatever the channel (a spray stays cheap)
            return age < min(self._ttl, _NEGATIVE_TTL)
        return self._live() or age < self._ttl

    def forget(self) -> None:
        self._entries.clear()
        self._generation += 1


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer cmg_...'", code="missing_api_key"
        )
    return token.strip()


async def authenticate(request: Request, keys: KeyCache, secret: str | None = None) -> Caller:
    """The caller of a workspace key: ``secret`` when the surface found it elsewhere (Anthropic's
    ``x-api-key``), else the ``Authorization: Bearer`` header."""
    return await caller_of(keys, secret or bearer(request))


async def caller_of(keys: KeyCache, secret: str) -> Caller:
    """The caller a workspace key stands for; 401 when it is unknown, revoked or expired."""
    record = await keys.resolve(secret)
    if record is None:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    if record.revoked:
        raise Unauthorized("this API key has been revoked", code="revoked_api_key")
    if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
        raise Unauthorized("this API key has expired", code="expired_api_key")
    return Caller(
        record.key_id, record.workspace_id, record.workspace, record.settings,
        record.rpm_limit, record.tpm_limit,
    )  # fmt: skip
