"""Recall: each item indexed with its conversational context and its own keys.

- ``context``: the text of the turns around the item in its conversation (same thread, or the
  same end user's unthreaded items; nearest by ``created_at``), filled by the embed job;
  ``context_ids`` says whose text it quotes, so deleting one of them refreshes it;
- ``ctx_tsv``: full text over ``context`` (its own GIN index: the lexical leg matches either);
- ``keys``: names, normalised dates and keyphrases (``memory.keys``), for the entity leg;
- ``index_version``: which version of this index the row has (``cmg memory reindex`` resumes
  from the rows that lack it).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CTX_TSV = "to_tsvector('english', left(coalesce(context, ''), 20000))"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE memory_items ADD COLUMN context text, ADD COLUMN context_ids uuid[], "
        "ADD COLUMN keys text[], ADD COLUMN index_version smallint, "
        f"ADD COLUMN ctx_tsv tsvector GENERATED ALWAYS AS ({CTX_TSV}) STORED"
    )
    op.execute(
        "CREATE INDEX memory_items_ws_ctx_tsv ON memory_items USING gin (workspace_id, ctx_tsv)"
    )
    op.execute("CREATE INDEX memory_items_ws_keys ON memory_items USING gin (workspace_id, keys)")
    op.execute(
        "CREATE INDEX memory_items_quoting ON memory_items USING gin (workspace_id, context_ids)"
    )
    op.execute(
        "CREATE INDEX memory_items_conversation ON memory_items "
        "(workspace_id, (coalesce(thread_id, '')), (coalesce(end_user, '')), created_at)"
    )


def downgrade() -> None:
    for index in ("conversation", "quoting", "ws_keys", "ws_ctx_tsv"):
        op.execute(f"DROP INDEX IF EXISTS memory_items_{index}")
    op.execute(
        "ALTER TABLE memory_items DROP COLUMN ctx_tsv, DROP COLUMN index_version, "
        "DROP COLUMN keys, DROP COLUMN context_ids, DROP COLUMN context"
    )
