"""Memory: threads, memory items (vector + full text), term statistics, injections, outbox.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import context, op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    dim = int(context.config.attributes.get("embedding_dim", 384))
    op.create_table(
        "threads",
        sa.Column(
            "workspace_id",
            UUID,
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("end_user", sa.Text, nullable=True),
        sa.Column("next_position", sa.Integer, nullable=False, server_default="0"),
        sa.Column("token_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("summarized_position", sa.Integer, nullable=False, server_default="0"),
        sa.Column("unsummarized_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("threads_by_user", "threads", ["workspace_id", "end_user", "updated_at"])
    op.create_table(
        "memory_items",
        sa.Column("id", UUID, primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column(
            "workspace_id", UUID, sa.ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("thread_id", sa.Text, nullable=True),
        sa.Column("end_user", sa.Text, nullable=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=True),
        sa.Column("position", sa.Integer, nullable=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("metadata", JSONB, nullable=False, server_default="{}"),
        sa.Column("source_ids", ARRAY(UUID), nullable=True),
        sa.Column("superseded_by", UUID, nullable=True),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("embedding", Vector(dim), nullable=True),
        sa.Column("embedding_model", sa.Text, nullable=True),
        sa.Column(
            "tsv",
            sa.dialects.postgresql.TSVECTOR,
            sa.Computed("to_tsvector('english', content)", persisted=True),
        ),
        sa.CheckConstraint("kind IN ('message', 'summary', 'fact', 'note')", name="memory_kind"),
    )
    op.execute(
        "CREATE INDEX memory_items_embedding ON memory_items "
        "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
    op.execute("CREATE INDEX memory_items_tsv ON memory_items USING gin (tsv)")
    op.create_index(
        "memory_items_thread", "memory_items", ["workspace_id", "thread_id", "created_at"]
    )
    op.create_index("memory_items_user", "memory_items", ["workspace_id", "end_user", "created_at"])
    op.create_index(
        "memory_items_position",
        "memory_items",
        ["workspace_id", "thread_id", "position"],
        unique=True,
        postgresql_where=sa.text("kind = 'message'"),
    )
    op.create_index(
        "memory_items_unembedded",
        "memory_items",
        ["created_at"],
        postgresql_where=sa.text("embedding IS NULL"),
    )
    op.create_table(
        "term_stats",
        sa.Column(
            "workspace_id",
            UUID,
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("lexeme", sa.Text, primary_key=True),
        sa.Column("df", sa.Integer, nullable=False),
    )
    op.create_table(
        "injections",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column(
            "workspace_id", UUID, sa.ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("thread_id", sa.Text, nullable=True),
        sa.Column("item_ids", ARRAY(UUID), nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("detail", JSONB, nullable=False, server_default="{}"),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("injections_by_workspace", "injections", ["workspace_id", "created_at"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("args", JSONB, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("pushed_at", TZ, nullable=True),
    )
    op.create_index(
        "outbox_pending", "outbox", ["id"], postgresql_where=sa.text("pushed_at IS NULL")
    )


def downgrade() -> None:
    for table in ("outbox", "injections", "term_stats", "memory_items", "threads"):
        op.drop_table(table)
