"""Recall latency: the full-text index keyed by workspace first.

A GIN index on ``tsv`` alone finds every workspace's matches; the lexical leg then ANDs them
with all of its workspace's rows (100k entries in a large workspace: ~10 ms), and a prepared
statement's generic plan always does. ``btree_gin`` lets one GIN index hold
``(workspace_id, tsv)``, so the scan reads only the workspace's posting lists.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")  # trusted: no superuser needed
    op.execute("CREATE INDEX memory_items_ws_tsv ON memory_items USING gin (workspace_id, tsv)")
    op.execute("DROP INDEX IF EXISTS memory_items_tsv")


def downgrade() -> None:
    op.execute("CREATE INDEX memory_items_tsv ON memory_items USING gin (tsv)")
    op.execute("DROP INDEX IF EXISTS memory_items_ws_tsv")
    op.execute("DROP EXTENSION IF EXISTS btree_gin")
