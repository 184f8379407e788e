"""Stored Responses (``POST /v1/responses`` with ``store``, its default): written in groups.

Every Responses call stores its answer unless told not to, so the write is on the hot path, and
it does not wait there: ``add`` queues the row and returns; one writer task takes whatever is
queued and COPYs it in one transaction (a few microseconds a row), committed without waiting for
the WAL flush (``synchronous_commit`` off for it alone). A database crash can lose the last
fraction of a second of stored responses, never half of one; memory and usage keep their full
durability.

Reads see a queued row at once on this replica (``get`` looks at the queue first). On another
replica, ``get(..., wait=)`` reads again for a moment before it says "not found": a client that
chains on a response it received from a sibling replica a millisecond ago still finds it once
that replica's group commits (a round trip or two). Measured: ``bench/surfaces.py``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson

from memory.db import ReadPool

_COPY = "COPY responses (id, workspace_id, response, input_items, conversation) FROM STDIN"
_INSERT = (
    "INSERT INTO responses (id, workspace_id, response, input_items, conversation) "
    "VALUES (%s, %s, %s::jsonb, %s::jsonb, %s::jsonb) ON CONFLICT DO NOTHING"
)
_SELECT = (
    "SELECT response, input_items, conversation FROM responses WHERE id = %s AND workspace_id = %s"
)
log = logging.getLogger("cmg.responses")
GATHER_SECONDS = 0.005

Key = tuple[str, str]  # (workspace id, response id)


@dataclass(frozen=True)
class Stored:
    response: dict[str, Any]
    input_items: list[Any]
    conversation: list[Any]


class ResponseStore:
    def __init__(self, pool: ReadPool) -> None:
        self.pool = pool
        self._queue: dict[Key, Stored] = {}
        self._writing: dict[Key, Stored] = {}
        self._written = asyncio.Event()  # set after every group (committed or not)
        self._wake = asyncio.Event()

    def add(self, workspace_id: str, resp_id: str, stored: Stored) -> None:
        """Queue ``stored`` for the next group; readable here at once."""
        self._queue[(workspace_id, resp_id)] = stored
        self._wake.set()

    async def get(self, workspace_id: str, resp_id: str, *, wait: float = 0.0) -> Stored | None:
        """The workspace's response ``resp_id`` (another workspace's: None), read again for up
        to ``wait`` seconds while it is not found (a sibling replica may be committing it)."""
        key = (workspace_id, resp_id)
        delay = 0.01
        while True:
            queued = self._queue.get(key) or self._writing.get(key)
            if queued is not None:
                return queued
            async with self.pool.connection() as conn:
                cursor = await conn.execute(_SELECT, (resp_id, workspace_id))
                row = await cursor.fetchone()
            if row is not None or wait <= 0:
                return Stored(*row) if row is not None else None
            await asyncio.sleep(min(delay, wait))
            wait, delay = wait - delay, delay * 2

    async def settled(self, workspace_id: str, resp_id: str) -> None:
        """Return once ``resp_id`` is no longer waiting to be written here (before a delete)."""
        key = (workspace_id, resp_id)
        while key in self._queue or key in self._writing:
            self._written.clear()
            await self._written.wait()

    async def run_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(GATHER_SECONDS)  # let a group form: one checkout and COPY for many
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is queued, as one group."""
        if not self._queue:
            return
        self._writing, self._queue = self._queue, {}
        rows = [
            (resp_id, workspace_id, _json(s.response), _json(s.input_items),
             _json(s.conversation))
            for (workspace_id, resp_id), s in self._writing.items()
        ]  # fmt: skip
        try:
            await self._copy(rows)
        except Exception:  # an id seen before (a provider's), a value refused: one by one
            await self._one_by_one(rows)
        finally:
            self._writing = {}
            self._written.set()

    async def _copy(self, rows: list[tuple[Any, ...]]) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit TO off")
            async with conn.cursor().copy(_COPY) as copy:
                for row in rows:
                    await copy.write_row(row)

    async def _one_by_one(self, rows: list[tuple[Any, ...]]) -> None:
        """Each row in its own statement, so one that fails loses only itself."""
        failed = 0
        for row in rows:
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(_INSERT, row)
            except Exception as exc:  # the answer went out; only its retrieval is lost
                failed += 1
                log.error("could not store response %s: %s", row[0], type(exc).__name__)
        if failed:
            log.error("%d of %d responses not stored", failed, len(rows))


def _json(value: Any) -> str:
    """JSON text, which COPY and the ``::jsonb`` casts read as jsonb (no adapter per value).
    jsonb refuses the NUL character: an escaped one becomes U+FFFD."""
    text = orjson.dumps(value).decode()
    return _NUL.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # \u0000 after an even run of backslashes
