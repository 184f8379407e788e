"""How the legs read Postgres: an exact scan within a small scope, a plan for each statement's
own values, the newest items first across a workspace; and never a row of another scope.

Rows go straight into ``memory_items`` (random vectors, chosen keys) of fresh workspaces in the
session's real Postgres; the legs read them through a real ``ReadPool``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import psycopg
import pytest

from memory import candidates
from memory.db import ReadPool
from memory.recall import (
    DocCounts,
    Filters,
    entity_leg,
    lexical_leg,
    vector_leg,
    vector_literal,
)
from tests.conftest import Services, new_workspace_id

T = TypeVar("T")
DIM = 384


def insert(services: Services, workspace_id: str, user: str, vectors: np.ndarray,
           keys: list[list[str]] | None = None) -> list[uuid.UUID]:  # fmt: skip
    """One item per vector, a minute apart, oldest first."""
    start = datetime(2024, 5, 1, tzinfo=UTC)
    rows = [
        (uuid.uuid4(), workspace_id, f"{user}-t{i // 20}", user, f"turn {i} of {user}",
         uuid.uuid4().hex, 4, start + timedelta(minutes=i), vector_literal(v),
         keys[i] if keys else [])
        for i, v in enumerate(vectors)
    ]  # fmt: skip
    with psycopg.connect(services.database_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO memory_items (id, workspace_id, thread_id, end_user, kind, role, "
            "content, content_hash, token_count, created_at, embedding, keys) VALUES "
            "(%s, %s, %s, %s, 'message', 'user', %s, %s, %s, %s, %s::vector, %s)",
            rows,
        )
        conn.execute("ANALYZE memory_items")
    return [r[0] for r in rows]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # type: ignore[no-any-return]


def read(services: Services, work: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        reads = ReadPool(services.database_url, pool_size=1)
        try:
            async with reads.connection() as conn:
                return await work(conn)
        finally:
            await reads.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def scopes(services: Services) -> dict[str, Any]:
    """Alice's 200 items, Bob's 200 in the same workspace, Alice's 200 in another one."""
    rng = np.random.default_rng(11)
    ws, other = new_workspace_id(services), new_workspace_id(services)
    alice, bob, elsewhere = unit(rng, 200), unit(rng, 200), unit(rng, 200)
    return {
        "ws": ws, "other": other, "query": unit(rng, 1)[0], "alice": alice,
        "alice_ids": insert(services, ws, "alice", alice),
        "bob_ids": insert(services, ws, "bob", bob),
        "elsewhere_ids": insert(services, other, "alice", elsewhere),
    }  # fmt: skip


def test_a_small_end_users_nearest_items_are_exact_and_the_same_as_hnsws(
    services: Services, scopes: dict[str, Any]
) -> None:
    query, filters = scopes["query"], Filters(scopes["ws"], "alice")
    distance = 1 - scopes["alice"] @ query
    exact = [scopes["alice_ids"][i] for i in np.argsort(distance)[:20]]

    async def both(conn: Any) -> tuple[list[Any], list[Any], str]:
        scanned = await vector_leg(conn, filters, vector_literal(query), 20)
        plan = await conn.execute(
            "EXPLAIN SELECT id FROM memory_items WHERE workspace_id = %s AND end_user = 'alice' "
            "AND superseded_by IS NULL AND embedding IS NOT NULL "
            "ORDER BY embedding <=> %s::vector LIMIT 20",
            (uuid.UUID(scopes["ws"]), vector_literal(query)),
        )
        await conn.execute("SET enable_sort = off")  # now only the HNSW index gives the order
        by_graph = await vector_leg(conn, filters, vector_literal(query), 20)
        await conn.execute("RESET enable_sort")
        return scanned, by_graph, "\n".join(r[0] for r in await plan.fetchall())

    scanned, by_graph, plan = read(services, both)
    assert "memory_items_embedding" not in plan  # 200 of 600 rows: an exact scan, not the graph
    assert [h.id for h in scanned] == exact
    assert [h.id for h in by_graph] == exact
    assert all(h.end_user == "alice" for h in scanned)
    for hit, i in zip(scanned, np.argsort(distance)[:20], strict=True):
        assert hit.similarity == pytest.approx(1 - distance[i], abs=1e-6)


def test_a_scoped_vector_leg_never_reads_another_end_user_or_workspace(
    services: Services, scopes: dict[str, Any]
) -> None:
    query = vector_literal(scopes["query"])

    async def legs(conn: Any) -> list[set[uuid.UUID]]:
        found = []
        for _ in range(8):  # past psycopg's prepare threshold: a prepared statement, too
            for scope in (Filters(scopes["ws"], "alice"), Filters(scopes["ws"], "bob")):
                found.append({h.id for h in await vector_leg(conn, scope, query, 50)})
        found.append({h.id for h in await vector_leg(conn, Filters(scopes["ws"]), query, 50)})
        return found

    *scoped, whole = read(services, legs)
    for alice, bob in zip(scoped[::2], scoped[1::2], strict=True):
        assert alice <= set(scopes["alice_ids"])
        assert bob <= set(scopes["bob_ids"])
    assert whole <= set(scopes["alice_ids"]) | set(scopes["bob_ids"])


def test_the_candidate_read_fills_new_rows_whole_and_only_within_the_scope(
    services: Services, scopes: dict[str, Any]
) -> None:
    query, filters = vector_literal(scopes["query"]), Filters(scopes["ws"], "alice")
    bobs, elsewhere = scopes["bob_ids"][0], scopes["elsewhere_ids"][0]

    async def work(conn: Any) -> tuple[dict[uuid.UUID, Any], dict[uuid.UUID, Any], list[Any]]:
        hits = await vector_leg(conn, filters, query, 3)
        legs = {h.id: (h, h.similarity) for h in hits}
        found = candidates.pool({"vector": hits})
        extra = next(i for i in reversed(scopes["alice_ids"]) if i not in found)
        ids = [*found, extra, bobs, elsewhere]
        return legs, found, await candidates._hydrate(conn, filters, found, ids, None, query)

    legs, found, added = read(services, work)
    (extra,) = added  # neither Bob's item nor the other workspace's, though their ids were asked
    assert found[extra].hit.content.endswith("of alice") and found[extra].hit.end_user == "alice"
    assert found[extra].hit.thread_id and found[extra].hit.similarity is not None
    for item_id, (hit, similarity) in legs.items():  # what the legs read stays as it was
        assert found[item_id].hit is hit and hit.content.endswith("of alice")
        assert hit.similarity == similarity
    assert bobs not in found and elsewhere not in found


def test_the_legs_and_the_candidate_read_are_planned_for_each_calls_values(
    services: Services, scopes: dict[str, Any]
) -> None:
    """Never prepared: a prepared statement would settle on one generic plan for every value."""
    query = vector_literal(scopes["query"])

    async def prepared(conn: Any) -> list[str]:
        counts = DocCounts()
        for user in ["alice", "bob", None] * 3:  # past psycopg's prepare threshold (5)
            filters = Filters(scopes["ws"], user)
            hits = await vector_leg(conn, filters, query, 10)
            await lexical_leg(conn, filters, "turn of alice", 10, counts, exact=False)
            await entity_leg(conn, filters, ["year:2024"], 10, query)
            found = candidates.pool({"vector": hits})
            await candidates._hydrate(conn, filters, found, list(found), None, query,
                                      threads=["alice-t0"])  # fmt: skip
        cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
        return [str(statement) for (statement,) in await cursor.fetchall()]

    statements = read(services, prepared)
    assert statements  # psycopg did prepare the statements that are the same for every value
    assert not [s for s in statements if "memory_items" in s and "ORDER BY" in s]


def test_the_entity_leg_across_a_workspace_returns_the_newest_items_sharing_a_key(
    services: Services,
) -> None:
    rng = np.random.default_rng(12)
    ws = new_workspace_id(services)
    keys = [["year:2024"] + (["name:zed"] if i % 25 == 0 else []) for i in range(300)]
    ids = insert(services, ws, "carol", unit(rng, 300), keys)
    insert(services, new_workspace_id(services), "carol", unit(rng, 50), [["name:zed"]] * 50)

    async def legs(conn: Any) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        common = await entity_leg(conn, Filters(ws), ["year:2024"], 20)
        rare = await entity_leg(conn, Filters(ws), ["name:zed"], 20)
        return [h.id for h in common], [h.id for h in rare]

    common, rare = read(services, legs)
    assert common == ids[::-1][:20]
    assert rare == [ids[i] for i in range(299, -1, -1) if i % 25 == 0]
