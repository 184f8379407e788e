"""Console sign-in: server-side sessions in Redis, CSRF tokens, and a bound on sign-in attempts.

The browser holds only a random session id (cookie ``cmg_console``: HttpOnly, SameSite=Strict,
``Secure`` behind TLS, path ``/ui``); Redis holds what it stands for, under the id's SHA-256, for
``CMG_CONSOLE_SESSION_SECONDS``. The key that signed in is never stored or shown: a workspace
session keeps the workspace, a master session only that it is one. Every form carries the
session's CSRF token; a POST without it (or from another origin) is refused. Sign-in attempts
that fail are bounded per client address (10 a minute), in Redis so every replica counts them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass

import orjson
import redis.asyncio as aioredis
from starlette.requests import Request

COOKIE = "cmg_console"
_PREFIX = "cmg:console:session:"
_ATTEMPTS = "cmg:console:signin:"
MAX_ATTEMPTS = 10  # per client address and minute


@dataclass(frozen=True)
class Session:
    master: bool
    workspace_id: str | None  # None for a master session
    workspace: str | None
    csrf: str
    key_id: str | None = None  # the workspace key that signed in (its limits cap new keys')
    rpm_limit: int | None = None
    tpm_limit: int | None = None


def _key(token: str) -> str:
    return _PREFIX + hashlib.sha256(token.encode()).hexdigest()


async def create(redis: aioredis.Redis, session: Session, lifetime: float) -> str:
    token = secrets.token_urlsafe(32)
    await redis.set(_key(token), orjson.dumps(asdict(session)), ex=max(1, int(lifetime)))
    return token


async def load(redis: aioredis.Redis, request: Request) -> Session | None:
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 100:
        return None
    raw = await redis.get(_key(token))
    return Session(**orjson.loads(raw)) if raw else None


async def end(redis: aioredis.Redis, request: Request) -> None:
    token = request.cookies.get(COOKIE)
    if token and len(token) <= 100:
        await redis.delete(_key(token))


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(session: Session, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), session.csrf.encode())


def same_origin(request: Request) -> bool:
    """A POST's ``Origin`` (when the browser sends one) must be this gateway."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _attempts_key(request: Request) -> str:
    return _ATTEMPTS + (request.client.host if request.client else "unknown")


async def blocked(redis: aioredis.Redis, request: Request) -> bool:
    """Whether this client address failed to sign in ``MAX_ATTEMPTS`` times this minute."""
    count = await redis.get(_attempts_key(request))
    return count is not None and int(count) >= MAX_ATTEMPTS


async def failed(redis: aioredis.Redis, request: Request) -> None:
    """Count a failed sign-in of this client address (for a minute from the first)."""
    key = _attempts_key(request)
    if await redis.incr(key) == 1:
        await redis.expire(key, 60)
