"""Thread summaries: by the configured model, or extractive when there is none or it fails."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from redis import Redis
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from core.settings import Settings
from memory.outbox import SUMMARIZE, record
from memory.schema import MemoryItem, Thread
from memory.tokens import count_text
from tests.conftest import Services
from tests.jobs import (
    add_items,
    burst,
    expected_term_stats,
    new_workspace,
    push,
    term_stats,
    worker_env,
)
from tests.mock_upstream import MockUpstream, Reply
from workers import jobs, summary

CONVERSATION = [
    "Hi! I'm Alice and I moved to Lisbon in March 2021.",
    "Nice to meet you, Alice. How do you like Lisbon?",
    "I love it. My budget for the new flat is 1800 euros a month.",
    "Noted: a flat in Lisbon for at most 1800 euros.",
    "ok",
    "Anything else?",
    "Yes, I decided to adopt a cat named Miso next Friday.",
    "Great, Miso it is.",
]
LLM_SUMMARY = "Alice lives in Lisbon since March 2021; flat budget 1800 EUR; adopting cat Miso."


@dataclass
class Scenario:
    workspace: uuid.UUID
    messages: dict[str, list[uuid.UUID]]
    model: str
    offline_first: str | None
    offline_again: str | None


def _summaries(db: Engine, workspace: uuid.UUID, thread: str) -> list[MemoryItem]:
    with Session(db) as session:
        return list(
            session.scalars(
                select(MemoryItem).where(
                    MemoryItem.workspace_id == workspace,
                    MemoryItem.thread_id == thread,
                    MemoryItem.kind == "summary",
                )
            )
        )


def _thread(db: Engine, workspace: uuid.UUID, thread: str) -> Thread:
    with Session(db) as session:
        found = session.get(Thread, (workspace, thread))
        assert found is not None
        return found


def _completion(model: str, content: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-summary",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
    )


@contextmanager
def offline_jobs(stack: Services) -> Iterator[None]:
    """Jobs run in this process, with no summary model configured."""
    jobs.configure(Settings(database_url=stack.database_url, redis_url=stack.redis_url))
    try:
        yield
    finally:
        jobs.close()


@pytest.fixture(scope="module")
def scenario(stack: Services, db: Engine, redis: Redis, mock: MockUpstream) -> Scenario:
    workspace = new_workspace(db)
    messages = {
        t: add_items(db, workspace, CONVERSATION, thread_id=t) for t in ("llm", "down", "off")
    }
    with Session(db) as session, session.begin():
        for thread in ("llm", "down"):  # what the gateway records past the threshold
            record(
                session, SUMMARIZE, "refresh_summary", workspace_id=str(workspace), thread_id=thread
            )

    with offline_jobs(stack):  # this process runs one thread's job itself, twice
        first = jobs.refresh_summary(str(workspace), "off")
        again = jobs.refresh_summary(str(workspace), "off")

    model = f"mock/summary-{uuid.uuid4().hex[:8]}"
    mock.script(model, Reply.raw(200, _completion(model, LLM_SUMMARY)), Reply.error(500))
    push(db, redis)
    env = worker_env(
        stack, CMG_SUMMARY_MODEL=model, OPENROUTER_BASE_URL=mock.base_url, CMG_UPSTREAM_RETRIES="0"
    )
    burst(env, queues="embed,summarize")
    return Scenario(workspace, messages, model, first, again)


def test_the_summary_model_writes_the_summary(
    scenario: Scenario, db: Engine, mock: MockUpstream
) -> None:
    [item] = _summaries(db, scenario.workspace, "llm")
    assert item.content == LLM_SUMMARY
    assert item.meta == {"covers_until_position": len(CONVERSATION), "method": "llm"}
    assert item.source_ids == scenario.messages["llm"]
    sent = mock.requests_for(scenario.model)[0].json
    assert sent["messages"][0] == {"role": "system", "content": summary.PROMPT}
    prompt = sent["messages"][1]["content"]
    day = f"{datetime.now(UTC):%Y-%m-%d}"
    assert f"[{day}] user: Hi! I'm Alice and I moved to Lisbon in March 2021." in prompt
    assert f"[{day}] assistant: Great, Miso it is." in prompt
    thread = _thread(db, scenario.workspace, "llm")
    assert thread.summarized_position == len(CONVERSATION) and thread.unsummarized_tokens == 0


def test_a_failing_summary_model_falls_back_to_an_extractive_summary(
    scenario: Scenario, db: Engine
) -> None:
    [item] = _summaries(db, scenario.workspace, "down")
    assert item.meta["method"] == "extractive"
    assert "1800" in item.content and "Miso" in item.content
    assert item.source_ids == scenario.messages["down"]


def test_without_a_model_the_extractive_summary_is_stored_once_and_searchable(
    scenario: Scenario, db: Engine
) -> None:
    [item] = _summaries(db, scenario.workspace, "off")
    assert scenario.offline_first == str(item.id) and scenario.offline_again is None
    assert item.meta == {"covers_until_position": len(CONVERSATION), "method": "extractive"}
    assert item.source_ids == scenario.messages["off"]
    assert "I'm Alice and I moved to Lisbon in March 2021." in item.content  # first user turn
    assert "I decided to adopt a cat named Miso next Friday." in item.content  # last user turn
    assert item.embedding is not None and item.embedding_model
    with db.connect() as conn:
        found = conn.execute(
            text(
                "SELECT id FROM memory_items WHERE workspace_id = :w AND kind = 'summary' "
                "AND tsv @@ to_tsquery('english', 'budget & lisbon')"
            ),
            {"w": scenario.workspace},
        ).scalars()
        assert item.id in set(found)
    assert term_stats(db, scenario.workspace) == expected_term_stats(db, scenario.workspace)


def test_new_messages_replace_the_summary_with_one_covering_everything(
    scenario: Scenario, stack: Services, db: Engine
) -> None:
    [old] = _summaries(db, scenario.workspace, "off")
    more = add_items(
        db, scenario.workspace, ["Update: the flat in Alfama costs 1750 euros.", "Good."],
        thread_id="off",
    )  # fmt: skip
    with offline_jobs(stack):
        new_id = jobs.refresh_summary(str(scenario.workspace), "off")
    [new] = _summaries(db, scenario.workspace, "off")
    assert str(new.id) == new_id != str(old.id)
    assert new.source_ids == [*scenario.messages["off"], *more]
    assert new.meta["covers_until_position"] == len(CONVERSATION) + 2
    assert "1750" in new.content and new.embedding is None  # its embed job is queued
    assert _thread(db, scenario.workspace, "off").summarized_position == len(CONVERSATION) + 2
    assert term_stats(db, scenario.workspace) == expected_term_stats(db, scenario.workspace)


def test_the_extractive_summary_keeps_facts_within_its_budget() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)

    def message(n: int, role: str, content: str) -> summary.Message:
        return summary.Message(uuid.uuid4(), role, content, now, n)

    chatter = [
        message(n + 2, "assistant", "Sure, happy to help with that. " * 3) for n in range(60)
    ]
    messages: list[Any] = [
        message(0, "user", "My name is Erik Lund and I live in Oslo."),
        message(1, "assistant", "Hello Erik."),
        *chatter,
        message(62, "user", "Our launch date moved to 14 June 2024 with 3 engineers."),
        message(63, "user", "thanks, bye"),
    ]
    text_ = summary.extractive(None, messages)
    assert count_text(text_, "gpt-4o") <= summary.MAX_TOKENS
    assert "- [2024-05-01] user: My name is Erik Lund and I live in Oslo." in text_
    assert "14 June 2024 with 3 engineers" in text_
    assert "user: thanks, bye" in text_  # the last user statement, however plain
    assert text_.count("happy to help") < 20
    lines = text_.splitlines()
    assert lines[0].endswith("Oslo.") and lines[-1].endswith("thanks, bye")  # in order

    later = [
        message(64 + n, "user", f"Filler question number {n}, Oslo weather again?")
        for n in range(40)
    ]
    rolled = summary.extractive(text_, later)
    assert rolled.splitlines()[0] == lines[0]  # the thread's first statement survives the roll
    assert count_text(rolled, "gpt-4o") <= summary.MAX_TOKENS
