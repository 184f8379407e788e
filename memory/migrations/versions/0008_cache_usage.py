"""Prompt cache accounting: the cached-input price, and memory's own tokens and cost in usage.

``models.cached_price`` is the provider's price per cached prompt token (OpenRouter's
``pricing.input_cache_read``; NULL: unknown, cached tokens cost the normal price).
``memory_tokens`` / ``memory_cost_usd`` are what the injected memory block added to a request.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_USAGE = ("usage_events", "usage_daily")


def upgrade() -> None:
    op.execute("ALTER TABLE models ADD COLUMN cached_price numeric(20, 12)")
    for table in _USAGE:
        kind = "bigint" if table == "usage_daily" else "integer"
        op.execute(f"ALTER TABLE {table} ADD COLUMN memory_tokens {kind} NOT NULL DEFAULT 0")
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN memory_cost_usd numeric(20, 10) NOT NULL DEFAULT 0"
        )


def downgrade() -> None:
    for table in _USAGE:
        op.execute(f"ALTER TABLE {table} DROP COLUMN memory_cost_usd")
        op.execute(f"ALTER TABLE {table} DROP COLUMN memory_tokens")
    op.execute("ALTER TABLE models DROP COLUMN cached_price")
