"""Alembic environment: runs migrations online against ``cmg.database_url``."""

from __future__ import annotations

from alembic import context

from memory.db import sync_engine
from memory.schema import Base

url = context.config.attributes.get("database_url") or context.config.get_main_option(
    "sqlalchemy.url"
)
engine = sync_engine(str(url))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
