"""Facts: extracted by the summary model from new turns, add-only, superseded by link."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from sqlalchemy import text

from core.settings import Settings
from gateway.services import workspaces
from memory.db import sync_engine
from memory.embedder import LocalMiniLM
from tests.conftest import Gateway, Services, Tenant, run_db
from tests.mock_upstream import MockUpstream, Reply
from workers import facts


def model_reply(content: dict[str, Any]) -> Reply:
    body = {
        "id": "chatcmpl-facts", "object": "chat.completion", "created": 1, "model": "facts",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": orjson.dumps(content).decode()}}],
    }  # fmt: skip
    return Reply.raw(200, orjson.dumps(body))


def turn(http: httpx.Client, tenant: Tenant, content: str, thread: str) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": "mock/gpt",
            "user": "u1",
            "messages": [{"role": "user", "content": content}],
        },
        headers={"Authorization": f"Bearer {tenant.key}", "X-Thread-Id": thread},
    )
    assert response.status_code == 200, response.text


def fact_jobs(services: Services, tenant: Tenant) -> list[list[str]]:
    async def work(session: Any) -> list[list[str]]:
        workspace = await workspaces.get_workspace(session, tenant.name)
        rows = await session.execute(
            text(
                "SELECT args FROM outbox "
                "WHERE job = 'extract_facts' AND args->>'workspace_id' = :ws"
            ),
            {"ws": str(workspace.id)},
        )
        return [r[0]["item_ids"] for r in rows]

    return run_db(services, work)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def embedder() -> LocalMiniLM:
    return LocalMiniLM()


def test_facts_are_extracted_linked_to_sources_and_superseded(
    gateway: Gateway, http: httpx.Client, tenant: Tenant, services: Services, mock: MockUpstream,
    embedder: LocalMiniLM,
) -> None:  # fmt: skip
    run_db(services, lambda s: workspaces.update_settings(s, tenant.name, {"facts": True}))
    time.sleep(1.2)  # the gateway's cached key carries the old settings for CMG_AUTH_CACHE_SECONDS
    model = f"facts-{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env(gateway.env, summary_model=f"alt/{model}")
    engine = sync_engine(services.database_url)
    workspace_id = str(run_db(services, lambda s: workspaces.get_workspace(s, tenant.name)).id)
    try:
        turn(http, tenant, "I moved to Lisbon last spring with my partner Ana.", "f-1")
        [first_ids] = fact_jobs(services, tenant)
        mock.script(
            model, model_reply({"facts": [{"text": "The user lives in Lisbon.", "replaces": []}]})
        )
        [lisbon] = facts.extract(engine, embedder, settings, workspace_id, first_ids)
        assert (
            facts.extract(engine, embedder, settings, workspace_id, first_ids) == []
        )  # idempotent

        turn(http, tenant, "Big news: we left Lisbon and now live in Porto.", "f-2")
        second_ids = next(ids for ids in fact_jobs(services, tenant) if ids != first_ids)
        mock.script(
            model, model_reply({"facts": [{"text": "The user lives in Porto.", "replaces": [1]}]})
        )
        [porto] = facts.extract(engine, embedder, settings, workspace_id, second_ids)
        sent = mock.requests_for(model)[-1].json["messages"][1]["content"]
        assert "1. The user lives in Lisbon." in sent  # the model saw the current facts, numbered

        with engine.connect() as conn:
            query = text(
                "SELECT id, kind, end_user, superseded_by, source_ids, "
                "embedding IS NOT NULL AS embedded FROM memory_items WHERE id = ANY(:ids)"
            )
            rows = {r.id: r for r in conn.execute(query, {"ids": [lisbon, porto]})}
        assert rows[lisbon].superseded_by == porto and rows[porto].superseded_by is None
        assert rows[porto].kind == "fact" and rows[porto].end_user == "u1" and rows[porto].embedded
        assert {str(i) for i in rows[porto].source_ids} == set(second_ids)
        hits = http.get(
            "/v1/memory/search", params={"q": "where does the user live", "user": "u1"},
            headers={"Authorization": f"Bearer {tenant.key}"},
        ).json()["data"]  # fmt: skip
        contents = [h["content"] for h in hits]
        assert (
            "The user lives in Porto." in contents and "The user lives in Lisbon." not in contents
        )
    finally:
        engine.dispose()


def test_malformed_model_answers_give_no_facts() -> None:
    assert facts.parse("not json") == []
    assert facts.parse('{"facts": "nope"}') == []
    assert facts.parse('{"facts": ["A plain fact.", {"text": "", "replaces": [1]}, 7]}') == [
        ("A plain fact.", [])
    ]
