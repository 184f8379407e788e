"""The grouped writer of stored Responses against a real database: a queued response is read
back at once, groups land in one COPY, a delete waits for a pending write, an id seen before
does not sink its group, and a reader waits a moment for a sibling replica's commit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from gateway.services import workspaces
from gateway.services.stored_responses import ResponseStore, Stored
from memory.db import ReadPool, run_transaction
from tests.conftest import Services, own_database


def _stored(n: int) -> Stored:
    return Stored({"id": f"resp_{n}", "output": [{"n": n}]}, [{"type": "message"}], [])


@pytest.fixture(scope="module")
def database(services: Services) -> Iterator[tuple[str, str]]:
    with own_database(services) as url:
        workspace = run_transaction(url, lambda s: workspaces.create_workspace(s, "stored"))
        yield url, str(workspace.id)


def test_queued_then_written_in_one_group(database: tuple[str, str]) -> None:
    url, ws = database

    async def run() -> None:
        pool = ReadPool(url, pool_size=2)
        store, other = ResponseStore(pool), ResponseStore(pool)  # two replicas, one database
        try:
            ids = [f"resp_{uuid.uuid4().hex}" for _ in range(50)]
            for n, resp_id in enumerate(ids):
                store.add(ws, resp_id, _stored(n))
            # readable here before any write; not yet on the other replica
            assert (await store.get(ws, ids[7])) == _stored(7)
            assert await other.get(ws, ids[7]) is None
            await store.flush()
            assert (await other.get(ws, ids[49])).response == {
                "id": "resp_49",
                "output": [{"n": 49}],
            }
            assert await other.get(str(uuid.uuid4()), ids[0]) is None  # another workspace
            # a sibling's commit that lands while we wait is found
            late = f"resp_{uuid.uuid4().hex}"
            store.add(ws, late, _stored(99))

            async def commit_soon() -> None:
                await asyncio.sleep(0.03)
                await store.flush()

            writer = asyncio.create_task(commit_soon())
            assert (await other.get(ws, late, wait=0.5)) == _stored(99)
            await writer
            assert await other.get(ws, "resp_never", wait=0.05) is None
        finally:
            await pool.close()

    asyncio.run(run())


def test_an_id_seen_before_does_not_sink_its_group(database: tuple[str, str]) -> None:
    url, ws = database

    async def run() -> None:
        pool = ReadPool(url, pool_size=2)
        store = ResponseStore(pool)
        try:
            seen = f"resp_{uuid.uuid4().hex}"
            store.add(ws, seen, _stored(1))
            await store.flush()
            fresh = f"resp_{uuid.uuid4().hex}"
            store.add(ws, seen, _stored(2))  # a provider sent the same id again
            store.add(ws, fresh, _stored(3))
            await store.flush()  # COPY fails on the duplicate; the group goes row by row
            assert (await store.get(ws, fresh)) == _stored(3)
            assert (await store.get(ws, seen)) == _stored(1)  # the first one stays
        finally:
            await pool.close()

    asyncio.run(run())


def test_settled_waits_for_the_pending_write(database: tuple[str, str]) -> None:
    url, ws = database

    async def run() -> None:
        pool = ReadPool(url, pool_size=2)
        store = ResponseStore(pool)
        writer = asyncio.create_task(store.run_forever())
        try:
            resp_id = f"resp_{uuid.uuid4().hex}"
            store.add(ws, resp_id, _stored(5))
            await asyncio.wait_for(store.settled(ws, resp_id), 5)
            assert (await ResponseStore(pool).get(ws, resp_id)) == _stored(5)  # committed
        finally:
            writer.cancel()
            await pool.close()

    asyncio.run(run())


def test_json_text_keeps_everything_but_a_nul() -> None:
    from gateway.services.stored_responses import _json

    assert _json({"a": "x\x00y"}) == '{"a":"x\\ufffdy"}'
    assert _json({"a": "\\u0000 is text"}) == '{"a":"\\\\u0000 is text"}'  # a backslash, kept
    assert _json({"a": "\\\x00"}) == '{"a":"\\\\\\ufffd"}'  # a backslash, then a NUL


def test_a_row_the_database_refuses_loses_only_itself(database: tuple[str, str]) -> None:
    url, ws = database

    async def run() -> None:
        pool = ReadPool(url, pool_size=2)
        store = ResponseStore(pool)
        try:
            nul, fine = f"resp_{uuid.uuid4().hex}", f"resp_{uuid.uuid4().hex}"
            store.add(ws, nul, Stored({"text": "a\x00b"}, [], [{"content": "x\x00"}]))
            store.add(ws, fine, _stored(8))
            store.add("not-a-uuid", f"resp_{uuid.uuid4().hex}", _stored(9))  # refused
            await store.flush()
            assert (await store.get(ws, fine)) == _stored(8)
            kept = await store.get(ws, nul)
            assert kept is not None and kept.response == {"text": "a\ufffdb"}
        finally:
            await pool.close()

    asyncio.run(run())
