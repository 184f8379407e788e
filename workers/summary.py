"""Rolling thread summaries: one ``summary`` memory item per thread, refreshed as it grows.

``threads.summarized_position`` is the exclusive end of what the summary covers: messages at
positions ``>= summarized_position`` are new. A refresh folds the new messages into the previous
summary, in chunks of at most ``_CHUNK_TOKENS`` so an arbitrarily long thread never overflows
the model. With ``CMG_SUMMARY_MODEL`` set the model writes it; without one, or when the provider
fails, an extractive summary keeps memory working offline. A thread whose summary was deleted
(a forgotten source message, retention) is summarized again from its first remaining message.

The model call happens outside any transaction; the write re-checks under the thread's row
lock that nobody else summarized meanwhile, so concurrent or repeated runs store one summary.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from core.providers import config as provider_config
from core.providers.client import ProviderClient
from core.providers.router import Router
from core.settings import Settings
from memory.forget import DELETE_ITEMS_SQL, params
from memory.outbox import EMBED, record
from memory.schema import MemoryItem
from memory.store import content_hash
from memory.tokens import count_text
from workers.llm import ChatBody

log = logging.getLogger("cmg.summary")

MAX_TOKENS = 250
_COUNT_MODEL = "gpt-4o"
_CHUNK_TOKENS = 6000
_LLM_TIMEOUT = 120.0
PROMPT = (
    "You maintain the rolling summary of a conversation for a long-term memory system. "
    "Merge the previous summary (if any) with the new messages into one concise summary. "
    "Keep names, dates, numbers, preferences and decisions; drop small talk. "
    "Write in the third person, at most 250 words. Answer with the summary only."
)


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    role: str
    content: str
    created_at: datetime
    position: int

    def line(self) -> str:
        return f"[{self.created_at:%Y-%m-%d}] {self.role}: {self.content}"


@dataclass(frozen=True)
class Pending:
    """What a refresh works on, read without locks."""

    workspace_id: uuid.UUID
    thread_id: str
    end_user: str | None
    seen_position: int  # threads.summarized_position when read: the write checks it is unchanged
    previous_ids: list[uuid.UUID]
    previous_text: str | None
    covered_ids: list[uuid.UUID]  # messages the previous summary covers
    messages: list[Message]

    @property
    def until(self) -> int:
        return self.messages[-1].position + 1


def load(session: Session, workspace_id: uuid.UUID, thread_id: str) -> Pending | None:
    """The thread's new messages and previous summary; None when there is nothing new."""
    key = {"w": workspace_id, "t": thread_id}
    thread = session.execute(
        text(
            "SELECT end_user, summarized_position FROM threads WHERE workspace_id = :w AND id = :t"
        ),
        key,
    ).first()
    if thread is None:
        return None
    previous = session.execute(
        text(
            "SELECT id, content, source_ids FROM memory_items WHERE workspace_id = :w "
            "AND thread_id = :t AND kind = 'summary' ORDER BY created_at DESC"
        ),
        key,
    ).all()
    start = thread.summarized_position if previous else 0
    rows = session.execute(
        text(
            "SELECT id, role, content, created_at, position FROM memory_items "
            "WHERE workspace_id = :w AND thread_id = :t AND kind = 'message' "
            "AND position >= :start ORDER BY position"
        ),
        {**key, "start": start},
    ).all()
    if not rows:
        return None
    return Pending(
        workspace_id=workspace_id,
        thread_id=thread_id,
        end_user=thread.end_user,
        seen_position=thread.summarized_position,
        previous_ids=[p.id for p in previous],
        previous_text=previous[0].content if previous else None,
        covered_ids=list(previous[0].source_ids or []) if previous else [],
        messages=[
            Message(r.id, r.role or "user", r.content, r.created_at, r.position) for r in rows
        ],
    )


def write(pending: Pending, settings: Settings) -> tuple[str, str]:
    """The new summary and how it was made: ``("...", "llm" | "extractive")``."""
    chunks = _chunks(pending.messages)
    if settings.summary_model:
        try:
            return asyncio.run(_write_with_model(pending.previous_text, chunks, settings)), "llm"
        except Exception as exc:  # any provider trouble: the extractive summary still works
            log.warning("summary model failed, using an extractive summary: %s", exc)
    summary = pending.previous_text
    for chunk in chunks:
        summary = extractive(summary, chunk)
    assert summary is not None
    return summary, "extractive"


def store(session: Session, pending: Pending, summary: str, method: str) -> uuid.UUID | None:
    """Replace the thread's summary and advance the thread, unless someone else already did."""
    key = {"w": pending.workspace_id, "t": pending.thread_id}
    position = session.execute(
        text(
            "SELECT summarized_position FROM threads WHERE workspace_id = :w AND id = :t FOR UPDATE"
        ),
        key,
    ).scalar()
    if position != pending.seen_position:
        return None  # a concurrent run stored its summary first, or the thread is gone
    sources = [*pending.covered_ids, *(m.id for m in pending.messages)]
    alive = session.execute(
        text("SELECT count(*) FROM memory_items WHERE id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": [*pending.previous_ids, *(m.id for m in pending.messages)]},
    ).scalar()
    if alive != len(pending.previous_ids) + len(pending.messages):
        return None  # something it was built from was deleted meanwhile: don't resurrect it
    if pending.previous_ids:
        session.execute(DELETE_ITEMS_SQL, params(pending.workspace_id, pending.previous_ids))
    item_id = uuid.uuid4()
    session.execute(
        insert(MemoryItem).values(
            id=item_id,
            workspace_id=pending.workspace_id,
            thread_id=pending.thread_id,
            end_user=pending.end_user,
            kind="summary",
            content=summary,
            content_hash=content_hash(summary),
            token_count=count_text(summary, _COUNT_MODEL),
            meta={"covers_until_position": pending.until, "method": method},
            source_ids=sources,
        )
    )
    record(session, EMBED, "embed_items", item_ids=[str(item_id)])
    session.execute(
        text(
            """
            UPDATE threads SET summarized_position = :until, unsummarized_tokens = (
                SELECT coalesce(sum(token_count), 0) FROM memory_items
                WHERE workspace_id = :w AND thread_id = :t AND kind = 'message'
                  AND position >= :until)
            WHERE workspace_id = :w AND id = :t
            """
        ),
        {**key, "until": pending.until},
    )
    return item_id


def _chunks(messages: Sequence[Message]) -> list[list[Message]]:
    chunks: list[list[Message]] = [[]]
    size = 0
    for message in messages:
        tokens = count_text(message.line(), _COUNT_MODEL)
        if chunks[-1] and size + tokens > _CHUNK_TOKENS:
            chunks.append([])
            size = 0
        chunks[-1].append(message)
        size += tokens
    return chunks


# --- the model ---


async def _write_with_model(
    previous: str | None, chunks: list[list[Message]], settings: Settings
) -> str:
    route = Router(provider_config.load(settings)).route(settings.summary_model)
    client = ProviderClient(settings)
    await client.start()
    try:
        summary = previous
        for chunk in chunks:
            summary = await asyncio.wait_for(_ask(client, route, summary, chunk), _LLM_TIMEOUT)
        assert summary is not None
        return summary
    finally:
        await client.close()


async def _ask(
    client: ProviderClient, route: Any, previous: str | None, chunk: list[Message]
) -> str:
    new = "\n".join(m.line() for m in chunk)
    prompt = f"Previous summary:\n{previous or '(none)'}\n\nNew messages:\n{new}"
    chat = ChatBody(
        {
            "model": route[0].served,
            "messages": [
                {"role": "system", "content": PROMPT},
                {"role": "user", "content": prompt},
            ],
            "max_tokens": 2 * MAX_TOKENS,
            "temperature": 0.2,
        }
    )
    upstream = await client.send("/chat/completions", chat, route)
    try:
        body = orjson.loads(await upstream.response.read())
    finally:
        upstream.close()
    content = body["choices"][0]["message"]["content"]
    if not isinstance(content, str) or not content.strip():
        raise ValueError("the summary model answered with no text")
    return content.strip()


# --- extractive ---

_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_DIGITS = re.compile(r"\d")
_NAME = re.compile(r"(?<=[^.!?]\s)[A-Z][a-z]+")
_DATE_WORDS = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b|"
    r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday|today|tomorrow|yesterday)\b",
    re.IGNORECASE,
)
_INTENT = re.compile(
    r"\b(prefer|like|love|hate|want|need|decid|chose|choose|plan|always|never|favou?rite|"
    r"allerg|name is|i am|i'm|my|we will|we'll|agreed|must|should)\w*",
    re.IGNORECASE,
)
_LINE = re.compile(r"^- (\[\d{4}-\d{2}-\d{2}\] \w+: )?")
_MAX_LINE_WORDS = 60
_MAX_LINE_CHARS = 400


def extractive(previous: str | None, messages: Sequence[Message]) -> str:
    """The most informative sentences, in order, within ``MAX_TOKENS``.

    Sentences with numbers, names, dates and stated preferences or decisions score high; the
    first and the last user statements are always kept (the thread's first stays the summary's
    first line across refreshes); lines of the previous summary start with a bonus, so
    established facts are not pushed out by chatter.
    """
    candidates: list[tuple[float, int, str]] = []
    for n, line in enumerate(_previous_lines(previous)):
        bonus = 100.0 if n == 0 else 1.0  # its first line is the thread's first statement
        candidates.append((_score(_LINE.sub("", line)) + bonus, len(candidates), line))
    users = [m for m in messages if m.role == "user"]
    anchors = {users[0].id, users[-1].id} if users else set()
    for message in messages:
        for i, sentence in enumerate(s.strip() for s in _SENTENCES.split(message.content)):
            if not sentence:
                continue
            line = f"- [{message.created_at:%Y-%m-%d}] {message.role}: {_clip(sentence)}"
            score = _score(sentence) + (0.5 if message.role == "user" else 0.0)
            if message.id in anchors and i == 0:
                score += 100.0
            candidates.append((score, len(candidates), line))
    chosen: list[tuple[int, str]] = []
    used = 0
    for _, order, line in sorted(candidates, key=lambda c: (-c[0], -c[1])):
        tokens = count_text(line, _COUNT_MODEL) + 1
        if used + tokens > MAX_TOKENS:
            continue
        chosen.append((order, line))
        used += tokens
    if not chosen and candidates:  # one huge sentence: keep what fits of the best one
        best = max(candidates, key=lambda c: c[0])[2]
        chosen = [(0, best[: MAX_TOKENS * 2] + " …")]
    return "\n".join(line for _, line in sorted(chosen))


def _previous_lines(previous: str | None) -> list[str]:
    """Lines of an extractive summary stay whole; a model's prose splits into sentences."""
    lines: list[str] = []
    for line in (previous or "").splitlines():
        line = line.strip()
        if _LINE.match(line):
            lines.append(line)
        elif line:
            lines.extend(f"- {_clip(s)}" for s in _SENTENCES.split(line) if s.strip())
    return lines


def _score(sentence: str) -> float:
    words = sentence.split()
    score = min(len(words), 20) / 10
    score += 2.0 if _DIGITS.search(sentence) else 0.0
    score += min(len(_NAME.findall(sentence)), 3) * 1.0
    score += 2.0 if _DATE_WORDS.search(sentence) else 0.0
    score += 1.5 if _INTENT.search(sentence) else 0.0
    if len(words) < 4:
        score -= 1.0
    if sentence.endswith("?"):
        score -= 0.5
    return score


def _clip(sentence: str) -> str:
    words = sentence.split()
    if len(words) > _MAX_LINE_WORDS:
        sentence = " ".join(words[:_MAX_LINE_WORDS]) + " …"
    return sentence if len(sentence) <= _MAX_LINE_CHARS else sentence[:_MAX_LINE_CHARS] + " …"
