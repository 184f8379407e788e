"""EXPLAIN ANALYZE of the two recall legs, as ``memory.recall`` actually issues them.

The legs run against a stand-in connection that, before each leg's main ``SELECT``, runs the
same statement with the same parameters under ``EXPLAIN (ANALYZE, BUFFERS)`` on the same
connection (so the leg's ``hnsw.*`` settings apply), then lets the real statement through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from memory import recall
from memory.db import ReadPool

_KEY = ("Scan", "Limit", "Sort", "Filter", "Rows Removed", "Index Cond", "Recheck",
        "Heap Blocks", "Buffers", "Planning Time", "Execution Time", "JIT", "Functions",
        "Timing", "Order By")  # fmt: skip


_VECTOR = re.compile(r"'\[[-0-9.e,]+\]'")


class _Explaining:
    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.plans: list[str] = []

    async def execute(self, sql: str, params: Any = None, **options: Any) -> Any:
        if sql.startswith(f"SELECT {recall._COLUMNS}"):
            cursor = await self._conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            self.plans.append("\n".join(str(r[0]) for r in await cursor.fetchall()))
        return await self._conn.execute(sql, params, **options)


async def explain_legs(
    reads: ReadPool, filters: recall.Filters, query: str,
    vector: Sequence[float], *, legs: Sequence[str] = ("vector", "lexical"), note: str = "",
    depth: int = 50,
) -> list[str]:  # fmt: skip
    """Key lines of each leg's plan, in ``legs`` order."""
    plans = []
    for leg in legs:
        async with reads.connection() as conn:
            spy = _Explaining(conn)
            if leg == "vector":
                await recall.vector_leg(spy, filters, [float(x) for x in vector], depth)  # type: ignore[arg-type]
            else:
                await recall.lexical_leg(spy, filters, query, depth, recall.DocCounts())  # type: ignore[arg-type]
        for plan in spy.plans:
            keep = [
                _VECTOR.sub("'[384 floats]'", line)
                for line in plan.splitlines()
                if any(k in line for k in _KEY)
            ]
            label = f"-- {leg} leg{f' ({note})' if note else ''}, query {query[:60]!r}"
            plans.append(label + "\n" + "\n".join(keep))
    return plans
