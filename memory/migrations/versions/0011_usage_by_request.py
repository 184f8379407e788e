"""Usage rows by request id, for the console's request inspector.

``usage_events`` was indexed by (workspace, time) only: looking one request up scanned the
workspace's rows. The inspector reads ``WHERE workspace_id = ? AND request_id = ?``.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("usage_events_by_request", "usage_events", ["workspace_id", "request_id"])


def downgrade() -> None:
    op.drop_index("usage_events_by_request", table_name="usage_events")
