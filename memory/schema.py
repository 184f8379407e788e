"""The relational schema (SQLAlchemy 2 ``Mapped`` models). Alembic migrations create it.

Workspaces own keys, threads and memory items; the model catalog is global. Every memory
query filters on ``workspace_id`` first.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Numeric,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    rpm_limit: Mapped[int | None]
    tpm_limit: Mapped[int | None]


class CatalogModel(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, index=True)
    upstream_id: Mapped[str] = mapped_column(Text)
    context_length: Mapped[int | None]
    prompt_price: Mapped[Decimal | None] = mapped_column(Numeric(20, 12))
    completion_price: Mapped[Decimal | None] = mapped_column(Numeric(20, 12))
    cached_price: Mapped[Decimal | None] = mapped_column(Numeric(20, 12))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Thread(Base):
    __tablename__ = "threads"

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    end_user: Mapped[str | None] = mapped_column(Text)
    next_position: Mapped[int] = mapped_column(default=0)
    token_count: Mapped[int] = mapped_column(default=0)
    summarized_position: Mapped[int] = mapped_column(default=0)
    unsummarized_tokens: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class MemoryItem(Base):
    __tablename__ = "memory_items"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    thread_id: Mapped[str | None] = mapped_column(Text)
    end_user: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int | None]
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    token_count: Mapped[int]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    source_ids: Mapped[list[uuid.UUID] | None] = mapped_column(ARRAY(UUID))
    superseded_by: Mapped[uuid.UUID | None] = mapped_column(UUID)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=True)
    embedding_model: Mapped[str | None] = mapped_column(Text)
    tsv: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english', left(content, 100000))")
    )
    # Filled by the embed job (memory.neighbours, memory.keys); migration 0007.
    context: Mapped[str | None] = mapped_column(Text)
    context_ids: Mapped[list[uuid.UUID] | None] = mapped_column(ARRAY(UUID))
    keys: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    index_version: Mapped[int | None]
    ctx_tsv: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english', left(coalesce(context, ''), 20000))")
    )


class TermStat(Base):
    __tablename__ = "term_stats"

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    lexeme: Mapped[str] = mapped_column(Text, primary_key=True)
    df: Mapped[int]


class Injection(Base):
    __tablename__ = "injections"

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    thread_id: Mapped[str | None] = mapped_column(Text)
    item_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID))
    tokens: Mapped[int]
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class StoredResponse(Base):
    """A response of ``POST /v1/responses`` kept for retrieval and ``previous_response_id``."""

    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    input_items: Mapped[list[Any]] = mapped_column(JSONB)
    conversation: Mapped[list[Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class OutboxRow(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    queue: Mapped[str] = mapped_column(Text)
    job: Mapped[str] = mapped_column(Text)
    args: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    pushed_at: Mapped[datetime | None]


class UsageEvent(Base):
    __tablename__ = "usage_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    created_at: Mapped[datetime]
    request_id: Mapped[str] = mapped_column(Text)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    key_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    model: Mapped[str] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(Text)
    status: Mapped[int]
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    cached_tokens: Mapped[int]
    memory_tokens: Mapped[int] = mapped_column(server_default="0")
    estimated: Mapped[bool]
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10))
    memory_cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), server_default="0")
    latency_ms: Mapped[float]
    route: Mapped[str] = mapped_column(Text, server_default="chat")


class UsageRefusal(Base):
    """Requests refused per day, workspace, key and kind (``rate_limit`` or ``budget``): not
    usage (nothing was forwarded), so apart from ``usage_daily``."""

    __tablename__ = "usage_refusals"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    key_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    refused: Mapped[int] = mapped_column(BigInteger)


class UsageDaily(Base):
    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    key_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    route: Mapped[str] = mapped_column(Text, primary_key=True, server_default="chat")
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    memory_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10))
    memory_cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), server_default="0")
