"""Recall's index and pipeline: context, keys, the entity leg, widening, explain, reindex, ranker.

Real gateway, real worker, real Postgres: items go in through the memory API or a chat
completion and come back through ``GET /v1/memory/search``; what the worker stored is read
from the database itself.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import psycopg
import pytest
from sqlalchemy import text

from memory import candidates
from memory import keys as item_keys
from memory.db import ReadPool
from memory.ranker import FEATURES, Ranker, RankerError
from memory.recall import DocCounts, Filters, lexical_leg
from tests.conftest import Services, Tenant, clean_env, make_tenant, own_database, run_db
from tests.gateway.surfaces.test_memory_api import add, api, search
from tests.memory.test_chat_memory import chat, wait_embedded

pytestmark = pytest.mark.usefixtures("worker")


def rows(services: Services, sql: str, **params: Any) -> list[Any]:
    async def work(session: Any) -> list[Any]:
        return list((await session.execute(text(sql), params)).all())

    return run_db(services, work)  # type: ignore[no-any-return]


def explained(http: httpx.Client, tenant: Tenant, q: str, **params: Any) -> list[dict[str, Any]]:
    return search(http, tenant, q, explain="true", **params)


def conversation(thread: str, user: str, *turns: str) -> list[dict[str, Any]]:
    """Turns of one thread, a minute apart, in order."""
    return [
        {"content": t, "thread_id": thread, "user": user, "kind": "message", "role": "user",
         "created_at": f"2023-05-08T13:{i:02d}:00Z"}
        for i, t in enumerate(turns)
    ]  # fmt: skip


# --- context indexing ---


def test_a_memory_api_turn_is_indexed_with_its_neighbours_and_found_through_them(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    thread, user = f"t-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    ids = add(http, tenant, *conversation(
        thread, user,
        "Melanie: What are your plans for the summer holidays?",
        "Caroline: Researching adoption agencies.",
        "Melanie: My kids love pottery class.",
    ))  # fmt: skip
    (context, quoted), = rows(
        services, "SELECT context, context_ids FROM memory_items WHERE id = :id", id=ids[1]
    )  # fmt: skip
    assert "plans for the summer" in context and "pottery" in context
    assert {str(i) for i in quoted} == {ids[0], ids[2]}
    hits = explained(http, tenant, "summer holidays plans", user=user)
    answer = next(h for h in hits if h["id"] == ids[1])
    assert answer["explain"]["features"]["bm25_context"] > 0
    assert answer["explain"]["features"]["bm25"] == 0  # found by its neighbour's words alone


def test_a_late_turn_refreshes_the_context_of_the_turn_before_it(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    thread, user = f"t-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    first = add(http, tenant, *conversation(thread, user, "Caroline: Where should I travel?"))
    later = conversation(thread, user, "x", "Melanie: Lisbon has wonderful tiles.")[1]
    add(http, tenant, later)
    ((context,),) = rows(services, "SELECT context FROM memory_items WHERE id = :id", id=first[0])
    assert "Lisbon" in context


def test_chat_capture_indexes_the_question_with_its_answer(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    thread = f"c-{uuid.uuid4().hex[:8]}"
    chat(client, "Which ferry goes to Skye?", thread)
    wait_embedded(http, tenant.key, thread, 2)
    found = rows(
        services,
        "SELECT role, context, keys FROM memory_items WHERE thread_id = :t ORDER BY position",
        t=thread,
    )
    (user_role, user_context, _), (answer_role, answer_context, _) = found
    assert (user_role, answer_role) == ("user", "assistant")
    assert "echo: Which ferry" in user_context  # the answer it got
    assert "Which ferry goes to Skye?" in answer_context  # the question it answers


# --- keys ---


def test_keys_hold_speaker_names_and_dates_resolved_against_the_item_date() -> None:
    found = item_keys.item_keys(
        "Caroline: I went to a support group yesterday with Melanie; we fly to Oslo next month.",
        datetime(2023, 5, 8, 13, 56),
    )
    assert {"speaker:caroline", "name:melanie", "name:oslo", "time"} <= set(found)
    assert {"date:2023-05-08", "date:2023-05-07", "month:2023-06"} <= set(found)
    assert "name:i" not in found and "name:we" not in found
    said = item_keys.mentioned_dates("see you, we met last Friday", date(2023, 5, 8))
    last_friday = [d for d, _ in said]
    assert last_friday == [date(2023, 5, 5)]  # 8 May 2023 was a Monday
    ago = item_keys.mentioned_dates("two weeks ago", date(2023, 5, 8))
    assert [d for d, _ in ago] == [date(2023, 4, 24)]
    asked = item_keys.query_keys("When did Caroline go to Oslo in June 2023?")
    assert asked.when and asked.names == {"caroline", "oslo"}
    assert asked.dates == {"month:2023-06", "moy:06", "year:2023"}


def test_a_question_dates_as_precisely_as_it_is_written() -> None:
    # No year: the month of any year, never a guess at one (the search must not depend on today).
    assert item_keys.query_keys("When did Melanie go camping in July?").dates == {"moy:07"}
    on_a_day = item_keys.query_keys("What did Audrey eat for dinner on October 24, 2023?")
    assert on_a_day.dates == {"date:2023-10-24", "month:2023-10", "moy:10", "year:2023"}
    assert not on_a_day.when
    assert item_keys.query_keys("How long has Caroline had her friends?").when
    assert item_keys.query_keys("How many years has he lived there?").when


def test_an_as_of_date_is_not_when_something_happened() -> None:
    # "as of" names the moment a state is taken: the turns that changed it are from before.
    as_of = item_keys.query_keys("How many pets will Andrew have, as of December 2023?")
    assert as_of.dates == frozenset() and as_of.names == {"andrew"}
    assert item_keys.query_keys("Where did he live as of 2021-03-05?").dates == frozenset()
    both = item_keys.query_keys("As of May 2023, what had she bought in March 2023?")
    assert both.dates == {"month:2023-03", "moy:03", "year:2023"}


def test_item_dates_keep_their_precision_and_durations_count_as_time() -> None:
    july = datetime(2023, 7, 17, 9, 0)
    own = set(item_keys.item_keys("Melanie: hi!", july))
    assert own == {"speaker:melanie", "date:2023-07-17", "month:2023-07", "moy:07", "year:2023"}
    last_year = set(item_keys.item_keys("Melanie: we went camping last year.", july))
    assert "year:2022" in last_year and not any(k.startswith("month:2022") for k in last_year)
    next_month = set(item_keys.item_keys("Melanie: the show is next month.", july))
    assert {"month:2023-08", "moy:08"} <= next_month
    assert not any(k.startswith("date:2023-08") for k in next_month)
    friends = item_keys.item_keys("Caroline: I've known these friends for 4 years.", july)
    assert "time" in friends


def test_the_worker_stores_the_keys(http: httpx.Client, tenant: Tenant, services: Services) -> None:
    item = {"content": "Caroline: We adopted a puppy named Biscuit last Friday.",
            "created_at": "2023-05-08T10:00:00Z", "user": "k"}  # fmt: skip
    (item_id,) = add(http, tenant, item)
    ((stored, version),) = rows(
        services, "SELECT keys, index_version FROM memory_items WHERE id = :id", id=item_id
    )
    assert {"speaker:caroline", "name:biscuit", "date:2023-05-05", "date:2023-05-08"} <= set(stored)
    assert version is not None


def test_key_patterns_take_linear_time_on_hostile_text() -> None:
    # Many near-matches in a row: a backtracking pattern would take seconds; these take one pass.
    hostile = "May " * 20000 + "3 days " * 20000 + "A" * 50000
    item_keys.item_keys(hostile, datetime(2023, 5, 8))
    item_keys.query_keys(hostile)


# --- legs, widening, explain ---


def test_explain_shows_each_leg_and_the_features_the_ranker_saw(
    http: httpx.Client, tenant: Tenant
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    add(http, tenant, *conversation(
        f"t-{user}", user,
        "Caroline: Zephyrine and I went hiking near the glacier.",
        "Melanie: That sounds cold!",
    ))  # fmt: skip
    hits = explained(http, tenant, "What did Zephyrine do at the glacier?", user=user)
    top = hits[0]
    assert "Zephyrine" in top["content"]
    legs = top["explain"]["legs"]
    assert {"vector", "lexical", "entity"} <= set(legs)
    assert all(set(v) == {"rank", "score"} for v in legs.values())
    assert set(top["explain"]["features"]) == set(FEATURES)
    assert top["explain"]["features"]["names"] == 1.0
    assert 0 < top["score"] < 1
    plain = search(http, tenant, "What did Zephyrine do at the glacier?", user=user)
    assert "explain" not in plain[0]


def test_the_entity_leg_finds_turns_by_a_named_person(http: httpx.Client, tenant: Tenant) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    ids = add(http, tenant, *conversation(
        f"t-{user}", user,
        "Quillon: The rehearsal went long tonight.",
        "Caroline: Sorry to hear, get some rest.",
    ))  # fmt: skip
    hits = explained(http, tenant, "How is Quillon doing?", user=user, mode="hybrid")
    by_id = {h["id"]: h for h in hits}
    assert "entity" in by_id[ids[0]]["explain"]["legs"]
    assert by_id[ids[0]]["explain"]["features"]["speaker"] == 1.0


def test_a_question_of_only_common_words_still_searches_by_its_rarest(
    http: httpx.Client, tenant: Tenant
) -> None:
    # "zorbing" is in every turn of this workspace: far past the share at which a lexeme is
    # dropped as noise. With nothing rarer in the question, it must still search by it.
    user = f"u-{uuid.uuid4().hex[:8]}"
    turns = [f"Andrew: zorbing plan number {i} with the dogs" for i in range(24)]
    ids = add(http, tenant, *conversation(f"t-{user}", user, *turns))
    hits = explained(http, tenant, "When are we going zorbing?", user=user)
    lexical = [h for h in hits if "lexical" in h["explain"]["legs"]]
    assert lexical and {h["id"] for h in lexical} <= set(ids)


def test_widening_adds_the_top_hits_neighbours_and_their_sessions_turns(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    ids = add(http, tenant, *conversation(
        f"t-{user}", user,
        "Melanie: Did the marmalade competition results come out?",
        "Caroline: Second place!",
        "Melanie: Congrats.",
    ), *conversation(f"other-{user}", user, "Caroline: Unrelated chatter."))  # fmt: skip
    ((workspace,),) = rows(
        services, "SELECT workspace_id FROM api_keys WHERE id = :id", id=uuid.UUID(tenant.key_id)
    )

    async def scenario() -> dict[uuid.UUID, candidates.Candidate]:
        reads = ReadPool(services.database_url, pool_size=1)
        try:
            async with reads.connection() as conn:
                filters = Filters(str(workspace), user)
                hits = await lexical_leg(conn, filters, "marmalade results", 50, DocCounts())
                found = candidates.pool({"lexical": [h for h in hits if str(h.id) == ids[0]]})
                await candidates.widen(conn, filters, found, None, None)
                return found
        finally:
            await reads.close()

    found = {str(k): v for k, v in asyncio.run(scenario()).items()}
    assert "widened" in found[ids[1]].legs  # the question's neighbour: its answer
    assert "widened" in found[ids[2]].legs  # a turn of the same session
    assert ids[3] not in found  # another session


# --- isolation and deletion ---


def test_no_leg_crosses_end_users_or_workspaces(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    word = f"Vortigern{uuid.uuid4().hex[:6]}"
    other = make_tenant(services)
    lines = (f"Caroline: {word} painted the fence.", "Melanie: Which colour?", "Caroline: Teal.")
    mine = add(http, tenant, *conversation("shared-thread", "alice", *lines))
    theirs = add(http, tenant, *conversation("shared-thread", "bob", *lines))
    elsewhere = add(http, other, *conversation("shared-thread", "alice", *lines))
    hits = explained(http, tenant, f"What did {word} paint, and which colour?", user="alice")
    got = {h["id"] for h in hits}
    assert got and got <= set(mine)
    assert not got & (set(theirs) | set(elsewhere))
    contexts = rows(
        services, "SELECT context_ids FROM memory_items WHERE id = ANY(:ids)",
        ids=[uuid.UUID(i) for i in mine],
    )  # fmt: skip
    assert {str(i) for (quoted,) in contexts for i in quoted} <= set(mine)


def test_a_deleted_turn_never_comes_back_through_a_neighbours_context(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    secret = f"Xylocarp{uuid.uuid4().hex[:6]}"
    ids = add(http, tenant, *conversation(
        f"t-{user}", user,
        "Melanie: How was the weekend?",
        f"Caroline: My locker code is {secret}.",
        "Melanie: Noted.",
    ))  # fmt: skip
    assert {h["id"] for h in search(http, tenant, secret, user=user)} >= {ids[0], ids[1], ids[2]}
    deleted = api(http, tenant, "DELETE", f"/v1/memory/items/{ids[1]}")
    assert deleted.status_code == 200
    left = rows(
        services, "SELECT context, context_ids FROM memory_items WHERE id = ANY(:ids)",
        ids=[uuid.UUID(ids[0]), uuid.UUID(ids[2])],
    )  # fmt: skip
    assert all(secret not in (context or "") for context, _ in left)
    assert all(uuid.UUID(ids[1]) not in (quoted or []) for _, quoted in left)
    for mode in ("hybrid", "lexical", "vector"):
        hits = search(http, tenant, secret, user=user, mode=mode)
        assert all(secret not in h["content"] for h in hits)
        assert all(h["id"] != ids[1] for h in hits)
    hybrid = explained(http, tenant, secret, user=user)
    assert all(h["explain"]["features"]["bm25_context"] == 0 for h in hybrid)


# --- reindex ---


def test_reindex_is_idempotent_and_resumes_where_it_stopped(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    ids = add(http, tenant, *conversation(
        f"t-{user}", user, "Caroline: Priya moved to Lisbon.", "Melanie: Lovely city.",
        "Caroline: She loves it.",
    ))  # fmt: skip
    as_uuids = [uuid.UUID(i) for i in ids]
    # As stored before migration 0007: no context, no keys, no index version.
    rows(services, "UPDATE memory_items SET context = NULL, context_ids = NULL, keys = NULL, "
         "index_version = NULL WHERE id = ANY(:ids) RETURNING id", ids=as_uuids)  # fmt: skip

    def reindex() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "memory", "reindex", "--workspace", tenant.name],
            env=clean_env() | {"DATABASE_URL": services.database_url,
                               "REDIS_URL": services.redis_url},
            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert reindex() == "3 memory items reindexed"
    stored = rows(services, "SELECT context, keys FROM memory_items WHERE id = :id", id=ids[1])
    assert "Priya moved to Lisbon" in stored[0][0] and "speaker:melanie" in stored[0][1]
    assert reindex() == "0 memory items reindexed"  # idempotent
    # Interrupted half-way: only the rows still lacking the index are done again.
    rows(services, "UPDATE memory_items SET index_version = NULL WHERE id = :id RETURNING id",
         id=ids[2])  # fmt: skip
    assert reindex() == "1 memory items reindexed"


def test_reindex_runs_as_a_worker_job_too(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    ids = add(http, tenant, *conversation(f"t-{user}", user, "Caroline: Hello.", "Mel: Hi!"))
    as_uuids = [uuid.UUID(i) for i in ids]
    rows(services, "UPDATE memory_items SET context = NULL, keys = NULL, index_version = NULL "
         "WHERE id = ANY(:ids) RETURNING id", ids=as_uuids)  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "memory", "reindex", "--queue",
         "--workspace", tenant.name],
        env=clean_env() | {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url},
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0 and "reindex queued" in done.stdout, done.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = rows(services, "SELECT count(*) FROM memory_items WHERE id = ANY(:ids) "
                    "AND (index_version IS NULL OR context IS NULL)", ids=as_uuids)  # fmt: skip
        if left[0][0] == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the worker did not run the reindex job")


def test_the_migration_downgrades_cleanly_and_upgrades_again(services: Services) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    from memory import migrate

    def columns(url: str) -> set[str]:
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'memory_items'"
            ).fetchall()
            indexes = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'memory_items'"
            ).fetchall()
        return {c for (c,) in found} | {i for (i,) in indexes}

    ours = {"context", "context_ids", "keys", "index_version", "ctx_tsv",
            "memory_items_ws_ctx_tsv", "memory_items_ws_keys", "memory_items_quoting",
            "memory_items_conversation"}  # fmt: skip
    with own_database(services) as url:
        assert ours <= columns(url)
        config = migrate.alembic_config(url)
        before = ScriptDirectory.from_config(config).get_revision("0007").down_revision
        command.downgrade(config, str(before))
        assert not ours & columns(url)
        command.upgrade(config, "head")
        assert ours <= columns(url)


def test_the_recent_items_index_comes_back_valid_over_an_interrupted_builds_leftover(
    services: Services,
) -> None:
    from alembic import command

    from memory import migrate

    def recent(url: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
                "WHERE c.relname = 'memory_items_recent'"
            ).fetchall()

    with own_database(services) as url:
        assert recent(url) == [(True,)]
        config = migrate.alembic_config(url)
        command.downgrade(config, "0012")
        assert recent(url) == []
        # What an interrupted CONCURRENTLY build leaves behind: an index under the same name.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE INDEX memory_items_recent ON memory_items (created_at)")
        command.upgrade(config, "head")
        assert recent(url) == [(True,)]
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'memory_items_recent'"
            ).fetchone()
        assert row is not None and "(workspace_id, created_at)" in row[0]


# --- the ranker's weights ---


def test_the_shipped_weights_load_and_bad_files_are_refused_clearly(tmp_path: Path) -> None:
    shipped = Ranker.load()
    assert set(shipped.weights) == set(FEATURES)
    missing = tmp_path / "nowhere.json"
    with pytest.raises(RankerError, match="not found"):
        Ranker.load(missing)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"weights": {"sim": 1.0,')
    with pytest.raises(RankerError, match="unreadable"):
        Ranker.load(corrupt)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"weights": {"sim": 1.0}, "bias": 0}))
    with pytest.raises(RankerError, match="no weight for"):
        Ranker.load(partial)
    not_a_number = tmp_path / "nan.json"
    not_a_number.write_text(json.dumps({"weights": dict.fromkeys(FEATURES, "x"), "bias": 0}))
    with pytest.raises(RankerError, match="finite number"):
        Ranker.load(not_a_number)


def test_the_gateway_refuses_to_start_with_a_corrupt_weights_file(
    tmp_path: Path, services: Services
) -> None:
    corrupt = tmp_path / "ranker.json"
    corrupt.write_text("not json")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "9"],
        env=clean_env() | {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url,
                           "CMG_RECALL_RANKER": str(corrupt)},
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode != 0
    assert "recall ranker weights unreadable" in done.stderr
    assert str(corrupt) in done.stderr
