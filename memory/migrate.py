"""Run the Alembic migrations programmatically (``cmg migrate``, ``cmg up``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_INI = Path(__file__).with_name("alembic.ini")


def alembic_config(database_url: str, embedding_dim: int = 384) -> Config:
    config = Config(str(_INI))
    config.attributes["database_url"] = database_url
    config.attributes["embedding_dim"] = embedding_dim
    return config


def upgrade(database_url: str, revision: str = "head", embedding_dim: int = 384) -> None:
    """Upgrade the schema; ``embedding_dim`` sizes the vector column when it is created."""
    command.upgrade(alembic_config(database_url, embedding_dim), revision)
