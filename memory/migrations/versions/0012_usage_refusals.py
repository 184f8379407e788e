"""Refused requests per day, workspace, key and kind (rate limit or budget).

A request a limit or the budget turned away was counted only in the per-process
``cmg_ratelimit_rejections_total``; the console shows them per workspace, so the usage
recorder now rolls them up here, in the same flush as usage.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE usage_refusals ("
        " day date NOT NULL,"
        " workspace_id uuid NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,"
        " key_id uuid NOT NULL,"
        " kind text NOT NULL,"
        " refused bigint NOT NULL,"
        " PRIMARY KEY (day, workspace_id, key_id, kind))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE usage_refusals")
