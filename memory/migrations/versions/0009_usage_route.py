"""Usage by route: chat completions and embeddings are accounted apart.

``route`` ('chat' or 'embeddings') joins the daily rollup's key, so ``GET /v1/usage?group_by=route``
and the admin report can tell what a workspace spent on which. Rows written before are chat.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("usage_events", "usage_daily"):
        op.add_column(table, sa.Column("route", sa.Text, nullable=False, server_default="chat"))
    op.drop_constraint("usage_daily_pkey", "usage_daily", type_="primary")
    op.create_primary_key(
        "usage_daily_pkey", "usage_daily", ["day", "workspace_id", "key_id", "model", "route"]
    )


def downgrade() -> None:
    # The old key cannot hold one model under two routes: embeddings rollups go (their
    # events stay in usage_events until the column is dropped below).
    op.execute("DELETE FROM usage_daily WHERE route <> 'chat'")
    op.drop_constraint("usage_daily_pkey", "usage_daily", type_="primary")
    op.create_primary_key(
        "usage_daily_pkey", "usage_daily", ["day", "workspace_id", "key_id", "model"]
    )
    for table in ("usage_events", "usage_daily"):
        op.drop_column(table, "route")
