"""The embedded PostgreSQL is sized for the box, and runs with what it was sized to."""

from __future__ import annotations

import psycopg

from gateway import embedded
from tests.conftest import Services

GB = 1 << 30


def test_shared_buffers_are_a_quarter_of_memory_between_128mb_and_2gb() -> None:
    assert embedded.server_settings(memory=4 * GB)["shared_buffers"] == "1024MB"
    assert embedded.server_settings(memory=64 * GB)["shared_buffers"] == "2048MB"
    assert embedded.server_settings(memory=GB // 4)["shared_buffers"] == "128MB"
    assert embedded.server_settings("512MB", memory=64 * GB)["shared_buffers"] == "512MB"


def test_the_embedded_server_runs_with_its_settings(services: Services) -> None:
    wanted = embedded.server_settings()
    with psycopg.connect(services.database_url) as conn:
        for name, value in wanted.items():
            same = conn.execute(
                "SELECT pg_size_bytes(current_setting(%s)) = pg_size_bytes(%s)", (name, value)
            ).fetchone()
            assert same == (True,), name
