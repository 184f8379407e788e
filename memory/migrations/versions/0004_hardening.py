"""Hardening: injections keyed per workspace; full text indexes a bounded prefix.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# PostgreSQL caps a tsvector at 1 MB; content of distinct tokens (ids, hashes) near the body
# limit would exceed it. The prefix is what full text indexes; the vector covers the rest.
TSV = "to_tsvector('english', left(content, 100000))"


def upgrade() -> None:
    # A request id is the client's to choose: it is unique per workspace, not globally.
    op.execute("ALTER TABLE injections DROP CONSTRAINT injections_pkey")
    op.execute("ALTER TABLE injections ADD PRIMARY KEY (workspace_id, request_id)")
    op.execute("DROP INDEX IF EXISTS memory_items_tsv")
    op.execute("ALTER TABLE memory_items DROP COLUMN tsv")
    op.execute(
        f"ALTER TABLE memory_items ADD COLUMN tsv tsvector GENERATED ALWAYS AS ({TSV}) STORED"
    )
    op.execute("CREATE INDEX memory_items_tsv ON memory_items USING gin (tsv)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS memory_items_tsv")
    op.execute("ALTER TABLE memory_items DROP COLUMN tsv")
    op.execute(
        "ALTER TABLE memory_items ADD COLUMN tsv tsvector "
        "GENERATED ALWAYS AS (to_tsvector('english', content)) STORED"
    )
    op.execute("CREATE INDEX memory_items_tsv ON memory_items USING gin (tsv)")
    op.execute("ALTER TABLE injections DROP CONSTRAINT injections_pkey")
    op.execute("ALTER TABLE injections ADD PRIMARY KEY (request_id)")
