"""Stored responses of ``POST /v1/responses`` (``store`` true, the default).

A row keeps the Response object, the input items as the client sent them (for
``GET /v1/responses/{id}/input_items``) and the conversation in chat form up to this response
(input only; the output is in ``response``), so ``previous_response_id`` can rebuild the chain.
Scoped to the workspace (its deletion cascades); retention purges rows with the workspace's
``retention_days`` like memory.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE responses ("
        " id text NOT NULL,"
        " workspace_id uuid NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,"
        " response jsonb NOT NULL,"
        " input_items jsonb NOT NULL,"
        " conversation jsonb NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (workspace_id, id))"
    )
    op.execute("CREATE INDEX responses_created ON responses (workspace_id, created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE responses")
