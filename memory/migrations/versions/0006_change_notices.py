"""Change notices: every write to what gateways cache announces itself on ``cmg_changes``.

A statement-level trigger on ``api_keys``, ``workspaces`` and ``models`` calls
``pg_notify('cmg_changes', <table>)``. PostgreSQL delivers the notice when (and only if) the
writing transaction commits, folds duplicates of one transaction into one, and covers every
writer alike: the admin API, the CLI, the catalog sync job and an operator's own SQL.
``gateway/services/notices.py`` listens and drops the matching in-process caches.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TABLES = ("api_keys", "workspaces", "models")


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION cmg_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('cmg_changes', TG_TABLE_NAME);
            RETURN NULL;
        END $$
        """
    )
    for table in _TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION cmg_notify_change()"
        )


def downgrade() -> None:
    for table in _TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify ON {table}")
    op.execute("DROP FUNCTION IF EXISTS cmg_notify_change()")
