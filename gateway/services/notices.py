"""Change notices: how every replica hears at once that a key, a workspace or the catalog changed.

Sits under the caches of the request path (``auth.KeyCache``, ``catalog.Catalog``). The triggers
of migration 0006 ``NOTIFY cmg_changes`` with the table's name when a write commits, whoever
wrote it (admin API, CLI, catalog sync, an operator's SQL). Each gateway process keeps one
PostgreSQL session that ``LISTEN``s and runs the callbacks registered for that table.

While the session is up, cached entries live until a notice drops them. While it is down the
caches fall back to their lifetimes (``CMG_AUTH_CACHE_SECONDS``, ``CMG_CATALOG_REFRESH_SECONDS``),
``cmg_notice_channel_up`` reads 0, a warning is logged, and the listener reconnects with backoff.
Every (re)connect runs every callback: notices sent while away are lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from core import metrics

log = logging.getLogger("cmg.notices")

CHANNEL = "cmg_changes"
TABLES = ("api_keys", "workspaces", "models")
_KEEPALIVE = 5.0  # a silent channel is checked this often: a dead peer may send no FIN
_BACKOFF = (0.2, 5.0)

Callback = Callable[[], None]


def libpq_url(database_url: str) -> str:
    """The URL as libpq takes it (SQLAlchemy's dialect prefix dropped)."""
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


class Notices:
    def __init__(self, url: str) -> None:
        self._url = libpq_url(url)
        self._callbacks: dict[str, list[Callback]] = {table: [] for table in TABLES}
        self.up = False
        metrics.NOTICE_UP.set(0)

    def on(self, table: str, callback: Callback) -> None:
        self._callbacks[table].append(callback)

    async def run_forever(self) -> None:
        delay, lost = _BACKOFF[0], False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=5, application_name="cmg-notices"
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._connected(lost)
                    delay = _BACKOFF[0]
                    await self._listen(conn)
            except Exception as exc:  # whatever ends the session, the caches must know it
                self._lost(exc, first=not lost)
            lost = True
            metrics.NOTICE_RECONNECTS.inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF[1])

    async def _listen(self, conn: psycopg.AsyncConnection[object]) -> None:
        while True:
            async for notice in conn.notifies(timeout=_KEEPALIVE):
                self._dispatch(notice.payload)
            await asyncio.wait_for(conn.execute("SELECT 1"), _KEEPALIVE)

    def _dispatch(self, table: str) -> None:
        callbacks = self._callbacks.get(table)
        if callbacks is None:
            return
        metrics.NOTICES.labels(table).inc()
        for callback in callbacks:
            callback()

    def _connected(self, again: bool) -> None:
        self.up = True
        metrics.NOTICE_UP.set(1)
        if again:
            log.warning("change notices back: cached keys, settings and catalog dropped")
        for table in TABLES:  # what changed while nobody listened is unknown
            for callback in self._callbacks[table]:
                callback()

    def _lost(self, exc: BaseException, *, first: bool) -> None:
        if self.up or first:
            log.warning(
                "change notices unavailable (%s): caches expire by their lifetimes; reconnecting",
                type(exc).__name__,
            )
        self.up = False
        metrics.NOTICE_UP.set(0)
