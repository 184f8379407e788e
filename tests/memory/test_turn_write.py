"""The chat turn's write (``store.write_turn``): one transaction on a plain connection that
stores what is new, keeps the thread's counters, queues the jobs and records the injection.

Real Postgres; the turns are written through a real ``ReadPool`` as the gateway writes them.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

from memory import store
from memory.db import ReadPool
from tests.conftest import Services, new_workspace_id

HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "My sister Ana moved to Lisbon last spring."},
    {"role": "assistant", "content": "Nice! Does she like it there?"},
    {"role": "user", "content": "She loves it, and she works at a bakery now."},
]
ANSWER = {"role": "assistant", "content": "A bakery in Lisbon sounds lovely."}


def write(services: Services, scope: store.Scope, messages: list[Any], answer: Any,
          *, threshold: int = 10**9, times: int = 1,
          injection: store.InjectionRecord | None = None) -> list[list[uuid.UUID]]:  # fmt: skip
    """``times`` writes of the same turn at once, each on its own connection."""

    async def run() -> list[list[uuid.UUID]]:
        pool = ReadPool(services.database_url)
        try:

            async def one() -> list[uuid.UUID]:
                async with pool.connection() as conn:
                    return await store.write_turn(conn, scope, messages, answer,
                                                  summary_threshold=threshold,
                                                  injection=injection)  # fmt: skip

            return list(await asyncio.gather(*(one() for _ in range(times))))
        finally:
            await pool.close()

    return asyncio.run(run())


def rows(services: Services, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(services.database_url) as conn:
        return conn.execute(sql, params).fetchall()


def test_a_turn_is_stored_once_with_its_counters_and_jobs_even_when_sent_eight_times_at_once(
    services: Services,
) -> None:
    ws = new_workspace_id(services)
    scope = store.Scope(ws, "t-" + uuid.uuid4().hex[:8], "ana-fan", facts=True)
    written = write(services, scope, HISTORY, ANSWER, times=8)
    new = [ids for ids in written if ids]
    assert len(new) == 1 and len(new[0]) == 4  # the system prompt is not memory
    items = rows(services, "SELECT id, position, role, token_count FROM memory_items WHERE "
                 "workspace_id = %s AND thread_id = %s ORDER BY position", ws,
                 scope.thread_id)  # fmt: skip
    assert [(p, r) for _, p, r, _ in items] == [
        (0, "user"), (1, "assistant"), (2, "user"), (3, "assistant")]  # fmt: skip
    assert {i for i, *_ in items} == set(new[0])
    thread = rows(services, "SELECT next_position, token_count, unsummarized_tokens, "
                  "end_user FROM threads WHERE workspace_id = %s AND id = %s", ws,
                  scope.thread_id)  # fmt: skip
    tokens = sum(t for *_, t in items)
    assert thread == [(4, tokens, tokens, "ana-fan")]
    jobs = rows(services, "SELECT job, args FROM outbox WHERE args->>'workspace_id' = %s "
                "OR args->'item_ids' ?| %s ORDER BY id", ws, [str(i) for i in new[0]])  # fmt: skip
    assert [j for j, _ in jobs] == ["embed_items", "extract_facts"]
    for _, args in jobs:
        assert sorted(args["item_ids"]) == sorted(str(i) for i in new[0])
    assert jobs[1][1]["workspace_id"] == ws

    # The next request resends the history: only its new turn and answer are stored.
    more = [*HISTORY, ANSWER, {"role": "user", "content": "What should I bring her?"}]
    (again,) = write(services, scope, more, {"role": "assistant", "content": "Coffee."})
    assert len(again) == 2
    assert rows(services, "SELECT next_position FROM threads WHERE workspace_id = %s AND id = %s",
                ws, scope.thread_id) == [(6,)]  # fmt: skip


def test_the_summary_job_is_queued_once_enough_is_unsummarised(services: Services) -> None:
    ws = new_workspace_id(services)
    scope = store.Scope(ws, "t-" + uuid.uuid4().hex[:8], None)
    summaries = (
        "SELECT count(*) FROM outbox WHERE job = 'refresh_summary' AND args->>'thread_id' = %s"
    )
    write(services, scope, HISTORY[:2], None)
    ((first,),) = rows(services, "SELECT unsummarized_tokens FROM threads WHERE id = %s",
                       scope.thread_id)  # fmt: skip
    assert first > 0 and rows(services, summaries, scope.thread_id) == [(0,)]
    write(services, scope, HISTORY, ANSWER, threshold=first + 1)  # now past it
    assert rows(services, summaries, scope.thread_id) == [(1,)]
    write(services, scope, HISTORY, ANSWER, threshold=first + 1)  # nothing new: no second job
    assert rows(services, summaries, scope.thread_id) == [(1,)]


def test_the_injection_is_recorded_with_the_turn_and_a_retry_keeps_the_first(
    services: Services,
) -> None:
    ws = new_workspace_id(services)
    scope = store.Scope(ws, "t-" + uuid.uuid4().hex[:8], None)
    first = store.InjectionRecord("req-1", [uuid.uuid4()], 42, {"placement": "tail"})
    write(services, scope, HISTORY, ANSWER, injection=first)
    retry = store.InjectionRecord("req-1", [], 7, {})
    write(services, scope, HISTORY, ANSWER, injection=retry)
    recorded = rows(services, "SELECT item_ids, tokens, detail, thread_id FROM injections "
                    "WHERE workspace_id = %s", ws)  # fmt: skip
    assert recorded == [(first.item_ids, 42, {"placement": "tail"}, scope.thread_id)]

    async def without_a_turn() -> None:
        pool = ReadPool(services.database_url)
        try:
            async with pool.connection() as conn:
                other = store.Scope(ws, None, None)
                await store.record_injection(conn, other, store.InjectionRecord("req-2", [], 0, {}))
        finally:
            await pool.close()

    asyncio.run(without_a_turn())
    recorded = rows(services, "SELECT request_id, thread_id FROM injections "
                    "WHERE workspace_id = %s ORDER BY request_id", ws)  # fmt: skip
    assert recorded == [("req-1", scope.thread_id), ("req-2", None)]


def test_a_failed_write_leaves_nothing_behind(services: Services) -> None:
    # The thread row is written by the first statement; the second cannot send a NUL: the
    # transaction takes the thread row back with it.
    ws = new_workspace_id(services)
    scope = store.Scope(ws, "t-" + uuid.uuid4().hex[:8], None)
    bad = store.InjectionRecord("req\x00", [], 1, {})
    with pytest.raises(psycopg.DataError):
        write(services, scope, HISTORY, ANSWER, injection=bad)
    for table in ("memory_items", "threads", "injections"):
        count = f"SELECT count(*) FROM {table} WHERE workspace_id = %s"
        assert rows(services, count, ws) == [(0,)]
