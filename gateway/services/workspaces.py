"""Workspaces and their API keys: creation, listing, revocation, lookup by hash.

A key is ``cmg_`` + 32 random bytes in base62, shown once; only its SHA-256 is stored.
The CLI and the admin API both call these functions.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import BadRequest, NotFound
from memory.schema import ApiKey, Workspace

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_PREFIX = "cmg_"
_MAX_DAYS = 36_500
_MAX_LIMIT = 2**31 - 1


def new_secret() -> str:
    n = int.from_bytes(secrets.token_bytes(32), "big")
    digits = []
    for _ in range(43):  # 62**43 > 2**256
        n, r = divmod(n, 62)
        digits.append(_ALPHABET[r])
    return KEY_PREFIX + "".join(digits)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    workspace: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "api_key",
            "workspace": self.workspace,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": int(self.created_at.timestamp()),
            "expires_at": _ts(self.expires_at),
            "revoked_at": _ts(self.revoked_at),
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
        }


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


async def create_workspace(session: AsyncSession, name: str) -> Workspace:
    name = name.strip()
    if not name or len(name) > 200 or "\x00" in name:
        raise BadRequest("workspace name must be 1-200 characters", param="name")
    workspace = Workspace(id=uuid.uuid4(), name=name, settings={})
    session.add(workspace)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise BadRequest(f"workspace {name!r} already exists", param="name", code="exists") from exc
    return workspace


async def get_workspace(session: AsyncSession, name: str) -> Workspace:
    workspace = await session.scalar(select(Workspace).where(Workspace.name == name))
    if workspace is None:
        raise NotFound(f"no workspace named {name!r}", param="workspace", code="not_found")
    return workspace


# Per-workspace settings and how each value is checked.
WORKSPACE_SETTINGS: dict[str, tuple[str, Any]] = {
    "memory": (
        "memory mode: on, off, read or write",
        lambda v: v in ("on", "off", "read", "write"),
    ),
    "redact_pii": ("mask emails, phone and card numbers in memory", lambda v: isinstance(v, bool)),
    "retention_days": (
        "delete memory older than this many days (null: keep)",
        lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
    ),
    "facts": ("extract durable facts about end users", lambda v: isinstance(v, bool)),
    "rpm": ("requests per minute for the whole workspace (null: none)", lambda v: _limit_ok(v)),
    "tpm": ("tokens per minute for the whole workspace (null: none)", lambda v: _limit_ok(v)),
    "max_n": ("largest n per chat request (null: CMG_MAX_N)", lambda v: _limit_ok(v)),
    "max_completion_tokens": (
        "largest max_tokens / max_completion_tokens (null: CMG_MAX_COMPLETION_TOKENS)",
        lambda v: _limit_ok(v),
    ),
    "monthly_budget_usd": (
        "monthly budget in USD (null: none)",
        lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0),
    ),
}


def _limit_ok(value: Any) -> bool:
    return value is None or (
        isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_LIMIT
    )


async def update_settings(session: AsyncSession, name: str, changes: dict[str, Any]) -> Workspace:
    workspace = await get_workspace(session, name)
    for key, value in changes.items():
        rule = WORKSPACE_SETTINGS.get(key)
        if rule is None:
            known = ", ".join(sorted(WORKSPACE_SETTINGS))
            raise BadRequest(f"unknown workspace setting {key!r} (known: {known})", param=key)
        if not rule[1](value):
            raise BadRequest(f"invalid value for {key}: {rule[0]}", param=key, code="invalid_value")
    workspace.settings = {**(workspace.settings or {}), **changes}
    await session.flush()
    return workspace


async def list_workspaces(session: AsyncSession) -> list[Workspace]:
    return list(await session.scalars(select(Workspace).order_by(Workspace.created_at)))


async def create_key(
    session: AsyncSession,
    workspace_name: str,
    *,
    name: str = "",
    expires_in_days: float | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
) -> tuple[str, KeyInfo]:
    """A new key; the secret is returned here and never again."""
    workspace = await get_workspace(session, workspace_name)
    if expires_in_days is not None and not 0 < expires_in_days <= _MAX_DAYS:
        raise BadRequest(
            f"expires_in_days must be between 0 and {_MAX_DAYS}", param="expires_in_days"
        )
    if len(name) > 200 or "\x00" in name:
        raise BadRequest("key name must be at most 200 characters", param="name")
    secret = new_secret()
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    key = ApiKey(
        id=uuid.uuid4(),
        workspace_id=workspace.id,
        name=name,
        prefix=secret[:8],
        key_hash=hash_secret(secret),
        created_at=datetime.now(UTC),
        expires_at=expires,
        rpm_limit=_limit(rpm_limit, "rpm_limit"),
        tpm_limit=_limit(tpm_limit, "tpm_limit"),
    )
    session.add(key)
    await session.flush()
    return secret, _info(key, workspace.name)


async def set_key_limits(
    session: AsyncSession, key_id: str, *, rpm_limit: int | None, tpm_limit: int | None
) -> KeyInfo:
    """Set (or, with None, remove) a key's per-minute limits."""
    parsed = _parse_id(key_id)
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id == parsed)
        .values(rpm_limit=_limit(rpm_limit, "rpm_limit"), tpm_limit=_limit(tpm_limit, "tpm_limit"))
    )
    return await _key_info(session, parsed)


def _limit(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_LIMIT:
        raise BadRequest(f"{name} must be an integer from 1 to {_MAX_LIMIT}, or null", param=name)
    return value


async def key_is_live(session: AsyncSession, key_id: str) -> bool:
    """Whether the key still works: not revoked, not expired (a console session checks)."""
    key = await session.get(ApiKey, _parse_id(key_id))
    if key is None or key.revoked_at is not None:
        return False
    return key.expires_at is None or key.expires_at > datetime.now(UTC)


async def list_keys(session: AsyncSession, workspace_name: str | None = None) -> list[KeyInfo]:
    query = select(ApiKey, Workspace.name).join(Workspace).order_by(ApiKey.created_at)
    if workspace_name is not None:
        query = query.where(Workspace.name == workspace_name)
    rows = await session.execute(query)
    return [_info(key, ws_name) for key, ws_name in rows]


async def revoke_key(session: AsyncSession, key_id: str) -> KeyInfo:
    parsed = _parse_id(key_id)
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id == parsed, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return await _key_info(session, parsed)


@dataclass(frozen=True)
class KeyRecord:
    """What auth needs of a key, loaded by its hash."""

    key_id: str
    workspace_id: str
    workspace: str
    settings: dict[str, Any]
    expires_at: datetime | None
    revoked: bool
    rpm_limit: int | None = None
    tpm_limit: int | None = None


async def find_key(session: AsyncSession, key_hash: str) -> KeyRecord | None:
    row = (
        await session.execute(
            select(ApiKey, Workspace).join(Workspace).where(ApiKey.key_hash == key_hash)
        )
    ).first()
    if row is None:
        return None
    key, workspace = row
    return KeyRecord(
        str(key.id),
        str(workspace.id),
        workspace.name,
        dict(workspace.settings or {}),
        key.expires_at,
        key.revoked_at is not None,
        key.rpm_limit,
        key.tpm_limit,
    )


async def _key_info(session: AsyncSession, key_id: uuid.UUID) -> KeyInfo:
    row = (
        await session.execute(
            select(ApiKey, Workspace.name).join(Workspace).where(ApiKey.id == key_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"no key with id {str(key_id)!r}", param="id", code="not_found")
    key, ws_name = row
    return _info(key, ws_name)


def _parse_id(key_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(key_id)
    except ValueError as exc:
        raise NotFound(f"no key with id {key_id!r}", param="id", code="not_found") from exc


def _info(key: ApiKey, workspace: str) -> KeyInfo:
    return KeyInfo(
        str(key.id), workspace, key.name, key.prefix, key.created_at, key.expires_at,
        key.revoked_at, key.rpm_limit, key.tpm_limit,
    )  # fmt: skip
