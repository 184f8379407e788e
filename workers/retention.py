"""Retention: a workspace whose ``settings`` has ``{"retention_days": N}`` keeps N days of memory.

Older items are forgotten through ``memory.forget`` (term statistics decremented, derived
summaries and facts deleted with them: nothing built from expired text survives). A thread that
lost its summary but still has messages is reset to "nothing summarized" and gets a
``refresh_summary`` job, so it is summarized again from what remains. Threads left empty are
deleted, and so are the workspace's old injection records. Housekeeping rides along: outbox
rows pushed more than a week ago and ``term_stats`` rows whose count fell to zero.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from memory import neighbours
from memory.forget import DELETE_ITEMS_SQL, params
from memory.outbox import SUMMARIZE, record

BATCH = 1000
OUTBOX_KEEP_DAYS = 7

_WORKSPACES = text(
    "SELECT id, floor((settings->>'retention_days')::numeric)::int AS days FROM workspaces "
    "WHERE jsonb_typeof(settings->'retention_days') = 'number' "
    "AND (settings->>'retention_days')::numeric >= 1"
)
_EXPIRED = text(
    "SELECT id FROM memory_items WHERE workspace_id = :w "
    "AND created_at < now() - make_interval(days => :days) ORDER BY created_at LIMIT :limit"
)
_UNSUMMARIZED = text(
    """
    UPDATE threads AS t SET summarized_position = 0, unsummarized_tokens = (
        SELECT coalesce(sum(token_count), 0) FROM memory_items AS m
        WHERE m.workspace_id = t.workspace_id AND m.thread_id = t.id AND m.kind = 'message')
    WHERE t.workspace_id = :w AND t.summarized_position > 0
      AND NOT EXISTS (SELECT 1 FROM memory_items AS m WHERE m.workspace_id = t.workspace_id
                      AND m.thread_id = t.id AND m.kind = 'summary')
    RETURNING t.id, t.unsummarized_tokens
    """
)
_EMPTY_THREADS = text(
    """
    DELETE FROM threads AS t
    WHERE t.workspace_id = :w AND t.updated_at < now() - make_interval(days => :days)
      AND NOT EXISTS (SELECT 1 FROM memory_items AS m
                      WHERE m.workspace_id = t.workspace_id AND m.thread_id = t.id)
    """
)
_OLD_INJECTIONS = text(
    "DELETE FROM injections WHERE workspace_id = :w "
    "AND created_at < now() - make_interval(days => :days)"
)
_OLD_RESPONSES = text(
    "DELETE FROM responses WHERE workspace_id = :w "
    "AND created_at < now() - make_interval(days => :days)"
)
_EMPTY_TERMS = text("DELETE FROM term_stats WHERE df <= 0")
_OLD_OUTBOX = text("DELETE FROM outbox WHERE pushed_at < now() - make_interval(days => :days)")


def purge(sessions: sessionmaker[Session]) -> int:
    """Apply every workspace's retention; returns how many memory items were deleted."""
    with sessions() as session:
        workspaces = session.execute(_WORKSPACES).all()
    deleted = sum(_purge_workspace(sessions, w.id, w.days) for w in workspaces)
    with sessions.begin() as session:
        session.execute(_OLD_OUTBOX, {"days": OUTBOX_KEEP_DAYS})
        session.execute(_EMPTY_TERMS)
    return deleted


def _purge_workspace(sessions: sessionmaker[Session], workspace_id: uuid.UUID, days: int) -> int:
    key = {"w": workspace_id, "days": days}
    deleted = 0
    while True:
        with sessions.begin() as session:
            ids = list(session.execute(_EXPIRED, {**key, "limit": BATCH}).scalars())
            if ids:
                deleted += session.execute(DELETE_ITEMS_SQL, params(workspace_id, ids)).scalar_one()
                neighbours.refresh_quoting(session, workspace_id, ids)
        if len(ids) < BATCH:
            break
    with sessions.begin() as session:
        for thread in session.execute(_UNSUMMARIZED, key).all():
            if thread.unsummarized_tokens > 0:
                record(
                    session, SUMMARIZE, "refresh_summary",
                    workspace_id=str(workspace_id), thread_id=thread.id,
                )  # fmt: skip
        session.execute(_EMPTY_THREADS, key)
        session.execute(_OLD_INJECTIONS, key)
        session.execute(_OLD_RESPONSES, key)
    return deleted
