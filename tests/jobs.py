"""Job fixtures: memory written as the gateway writes it, jobs run by real ``cmg worker`` processes.

Used by ``tests/workers/`` and the CLI's job commands (``tests/gateway/ops/test_cli_jobs.py``).

Items are inserted unembedded with their outbox row in the same transaction (what
``memory/store.py`` does); the relay or ``push_outbox`` puts them on real Redis; a real
``python -m gateway worker --burst`` process runs them against the real database.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from gateway.ops import local_services
from memory.db import sync_engine
from memory.embedder import LocalMiniLM
from memory.outbox import EMBED, drain_sync, record, redis_client
from memory.schema import MemoryItem, Thread, Workspace
from memory.tokens import count_text
from tests.conftest import ROOT, Services, clean_env, own_database, stop_group


@pytest.fixture(scope="session")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A database and a Redis of our own, in the session's PostgreSQL.

    The session gateway's outbox relay and the session worker use the shared ones; here no other
    process pushes our outbox rows or takes our jobs, so tests can assert who ran what.
    """
    data_dir = tmp_path_factory.mktemp("workers-data")
    rd = local_services.start_redis(data_dir)
    try:
        with own_database(services) as url:
            yield Services(url, rd.url, data_dir)
    finally:
        rd.stop()


@pytest.fixture(scope="session")
def db(stack: Services) -> Iterator[Engine]:
    engine = sync_engine(stack.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis(stack: Services) -> Iterator[Redis]:
    client = redis_client(stack.redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def minilm() -> LocalMiniLM:
    return LocalMiniLM()


def worker_env(services: Services, **extra: str) -> dict[str, str]:
    env = clean_env()
    env.update(
        DATABASE_URL=services.database_url,
        REDIS_URL=services.redis_url,
        CMG_DATA_DIR=str(services.data_dir),
        OPENROUTER_BASE_URL="http://127.0.0.1:9/v1",  # nothing listens: no test reaches out
        CMG_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


@contextmanager
def cmg_process(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``cmg <args>`` running for the block, in a process group of its own; stopped after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_group(proc)


def cmg(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def burst(env: dict[str, str], queues: str = "embed,summarize,maintenance") -> str:
    """Run one burst worker until the queues are empty; its log."""
    return cmg(env, "worker", "--burst", "--queues", queues).stderr


def new_workspace(db: Engine, settings: dict[str, Any] | None = None) -> uuid.UUID:
    with Session(db) as session, session.begin():
        workspace = Workspace(name=f"wk-{uuid.uuid4().hex[:10]}", settings=settings or {})
        session.add(workspace)
        session.flush()
        return workspace.id


def add_items(
    db: Engine,
    workspace_id: uuid.UUID,
    texts: Sequence[str],
    *,
    thread_id: str | None = None,
    created_at: datetime | None = None,
    kind: str = "message",
) -> list[uuid.UUID]:
    """Insert items (and their thread) unembedded with an ``embed_items`` job, like the gateway."""
    with Session(db) as session, session.begin():
        position = 0
        if thread_id is not None:
            thread = session.get(Thread, (workspace_id, thread_id), with_for_update=True)
            if thread is None:
                thread = Thread(workspace_id=workspace_id, id=thread_id)
                session.add(thread)
                session.flush()
            position = thread.next_position
        items = []
        for i, content in enumerate(texts):
            tokens = count_text(content, "gpt-4o")
            item = MemoryItem(
                workspace_id=workspace_id,
                thread_id=thread_id,
                kind=kind,
                role=("user", "assistant")[i % 2] if kind == "message" else None,
                position=position + i if thread_id is not None and kind == "message" else None,
                content=content,
                content_hash=uuid.uuid4().hex,
                token_count=tokens,
                meta={},
            )
            if created_at is not None:
                item.created_at = created_at
            items.append(item)
        session.add_all(items)
        session.flush()
        if thread_id is not None and kind == "message":
            thread.next_position += len(texts)
            thread.token_count += sum(i.token_count for i in items)
            thread.unsummarized_tokens += sum(i.token_count for i in items)
            if created_at is not None:
                thread.updated_at = created_at
        ids = [item.id for item in items]
        record(session, EMBED, "embed_items", item_ids=[str(i) for i in ids])
        return ids


def push(db: Engine, redis: Redis) -> int:
    return drain_sync(sessionmaker(db), redis)


def term_stats(db: Engine, workspace_id: uuid.UUID) -> dict[str, int]:
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT lexeme, df FROM term_stats WHERE workspace_id = :w AND df > 0"),
            {"w": workspace_id},
        )
        return {r.lexeme: r.df for r in rows}


def expected_term_stats(db: Engine, workspace_id: uuid.UUID) -> dict[str, int]:
    """What ``term_stats`` must hold: one count per distinct lexeme of each embedded item."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT lexeme, count(*) AS df FROM memory_items, "
                "unnest(tsvector_to_array(tsv)) AS lexeme "
                "WHERE workspace_id = :w AND embedding IS NOT NULL GROUP BY lexeme"
            ),
            {"w": workspace_id},
        )
        return {r.lexeme: r.df for r in rows}


def embedded_count(db: Engine, ids: Sequence[uuid.UUID]) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM memory_items "
                    "WHERE id = ANY(CAST(:ids AS uuid[])) AND embedding IS NOT NULL"
                ),
                {"ids": list(ids)},
            ).scalar_one()
        )
