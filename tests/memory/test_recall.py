"""Recall internals that the API tests cannot pin: the lexical candidates, fusion, the document
counts' background refresh, and how ``Memory.search`` overlaps its legs with the embedding."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from memory import recall, service
from memory.recall import DocCounts, Filters, Hit
from memory.service import Knobs, Memory

WORKSPACE = str(uuid.uuid4())


def hit(similarity: float | None = None, lexical: float | None = None) -> Hit:
    return Hit(
        uuid.uuid4(), "message", "user", None, None, "text", uuid.uuid4().hex, 1, {},
        datetime(2024, 1, 1, tzinfo=UTC), similarity=similarity, lexical=lexical,
    )  # fmt: skip


def test_lexical_candidates_come_from_the_rarest_lexemes_up_to_the_budget() -> None:
    df = {"zanzibar": 3, "ferry": 400, "island": 700, "summer": 900}
    useful = sorted(df, key=df.__getitem__)
    assert recall._rarest(useful, df) == ["zanzibar", "ferry"]
    assert recall._rarest(["summer"], {"summer": 5000}) == ["summer"]  # at least one


def test_fusion_ranks_items_both_legs_found_first_and_floors_vector_only_hits() -> None:
    both, vector_only, weak, text_only = hit(0.9), hit(0.8), hit(0.1), hit(lexical=2.0)
    twin = Hit(**{**both.__dict__, "similarity": None, "lexical": 3.0})
    fused = recall.fuse([both, vector_only, weak], [twin, text_only], limit=10, min_similarity=0.35)
    assert fused[0].id == both.id and {h.id for h in fused} == {
        both.id, vector_only.id, text_only.id
    }  # fmt: skip
    assert fused[0].lexical == 3.0 and fused[0].similarity == 0.9


class _Cursor:
    def __init__(self, row: tuple[int, float]) -> None:
        self._row = row

    async def fetchone(self) -> tuple[int, float]:
        return self._row


class _Conn:
    def __init__(self, counted: list[int]) -> None:
        self.counted = counted

    async def execute(self, *_: Any) -> _Cursor:
        self.counted.append(1)
        return _Cursor((len(self.counted) * 100, 10.0))


class _Reads:
    """Stands in for ``memory.db.ReadPool``: connections that count their statements."""

    def __init__(self, counted: list[int]) -> None:
        self.counted = counted

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[_Conn]:
        yield _Conn(self.counted)


def test_expired_document_counts_are_served_while_one_refresh_runs_behind() -> None:
    async def scenario() -> list[tuple[int, float]]:
        counted: list[int] = []
        counts = DocCounts(ttl=0.0, pool=_Reads(counted))  # type: ignore[arg-type]
        conn: Any = _Conn(counted)
        first = await counts.get(conn, WORKSPACE)  # nothing cached: counted now
        stale = await counts.get(conn, WORKSPACE)  # expired: served, refresh started
        again = await counts.get(conn, WORKSPACE)  # the refresh is still pending
        await asyncio.sleep(0.01)
        fresh = await counts.get(conn, WORKSPACE)
        await asyncio.sleep(0.01)
        return [first, stale, again, fresh]

    assert asyncio.run(scenario()) == [(100, 10.0), (100, 10.0), (100, 10.0), (200, 10.0)]


class _Embedder:
    name = "stub"
    dim = 3

    def __init__(self, lexical_started: threading.Event) -> None:
        self._lexical_started = lexical_started

    def embed(self, texts: Sequence[str]) -> Any:
        # Runs in a worker thread: only finishes if the lexical leg started meanwhile.
        assert self._lexical_started.wait(10), "the lexical leg did not run during the embedding"
        return np.ones((len(texts), 3), dtype=np.float32)


async def _no_terms(*_: Any) -> None:
    return None


async def _nothing_found(*_: Any) -> list[Hit]:
    return []


def _memory(monkeypatch: pytest.MonkeyPatch, vector_leg: Any, lexical_leg: Any) -> Memory:
    monkeypatch.setattr(service, "vector_leg", vector_leg)
    monkeypatch.setattr(service, "lexical_leg", lexical_leg)
    # Only the two legs' plumbing is under test here: the other steps read nothing.
    monkeypatch.setattr(service, "query_terms", _no_terms)
    monkeypatch.setattr(service, "entity_leg", _nothing_found)
    monkeypatch.setattr(service.candidates, "widen", _nothing_found)
    started = threading.Event()
    knobs = Knobs(max_tokens=100, max_items=4, min_similarity=0.3, candidates=5,
                  summary_threshold=100)  # fmt: skip
    memory = Memory(None, _Reads([]), _Embedder(started), knobs)  # type: ignore[arg-type]
    memory.lexical_started = started  # type: ignore[attr-defined]
    return memory


def test_search_runs_the_lexical_leg_while_the_query_is_embedded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = hit(lexical=1.0)
    memory: Memory

    async def lexical_leg(*_: Any, **__: Any) -> list[Hit]:
        memory.lexical_started.set()  # type: ignore[attr-defined]
        return [found]

    async def vector_leg(*_: Any, **__: Any) -> list[Hit]:
        return [hit(0.9)]

    memory = _memory(monkeypatch, vector_leg, lexical_leg)
    hits = asyncio.run(memory.search(Filters(WORKSPACE), "where is the ferry", 10))
    assert found.id in {h.id for h in hits} and len(hits) == 2


def test_a_failing_vector_leg_cancels_the_lexical_leg_and_raises_its_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cancelled = []
    memory: Memory

    async def lexical_leg(*_: Any, **__: Any) -> list[Hit]:
        memory.lexical_started.set()  # type: ignore[attr-defined]
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return []

    async def vector_leg(*_: Any, **__: Any) -> list[Hit]:
        raise ConnectionError("database went away")

    memory = _memory(monkeypatch, vector_leg, lexical_leg)
    with pytest.raises(ConnectionError, match="went away"):
        asyncio.run(memory.search(Filters(WORKSPACE), "where is the ferry", 10))
    assert cancelled == [True]


def test_across_a_workspace_the_entity_leg_runs_while_the_query_is_embedded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Newest first across a workspace needs no vector; within an end user it orders by it."""
    calls: list[tuple[str | None, bool, str | None]] = []
    query = "where is Caroline's ferry"
    memory: Memory

    async def lexical_leg(*_: Any, **__: Any) -> list[Hit]:
        memory.lexical_started.set()  # type: ignore[attr-defined]
        return []

    async def vector_leg(*_: Any, **__: Any) -> list[Hit]:
        return []

    async def entity_leg(
        _: Any, filters: Filters, keys: Sequence[str], n: int, vector: str | None = None
    ) -> list[Hit]:
        calls.append((filters.end_user, query in memory._vectors, vector))
        return []

    memory = _memory(monkeypatch, vector_leg, lexical_leg)
    monkeypatch.setattr(service, "entity_leg", entity_leg)
    asyncio.run(memory.search(Filters(WORKSPACE), query, 10))
    memory.lexical_started.clear()  # type: ignore[attr-defined]
    memory._vectors.clear()
    asyncio.run(memory.search(Filters(WORKSPACE, "alice"), query, 10))
    assert calls == [(None, False, None), ("alice", True, "[1,1,1]")]
