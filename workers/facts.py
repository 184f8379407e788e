"""Facts: durable statements about an end user, extracted from new turns by the summary model.

Opt-in per workspace (``facts`` setting) and only with ``CMG_SUMMARY_MODEL``. Add-only: the
model sees the user's current facts, numbered, and says which ones a new fact replaces; the old
fact then points to the new one (``superseded_by``) and leaves recall, but is never deleted.
Facts are embedded here (the embedder is at hand) and carry their source message ids.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from core.providers import config as provider_config
from core.providers.client import ProviderClient
from core.providers.router import Router
from core.settings import Settings
from memory.embedder import Embedder, document_text
from memory.redact import redact
from memory.store import content_hash
from memory.tokens import count_text
from workers.llm import ChatBody
from workers.vectors import COUNT_TERMS, as_text

PROMPT = (
    "You maintain a list of durable facts about a user (identity, relationships, preferences, "
    "plans, possessions, places, dates). From the NEW MESSAGES, extract facts the user stated "
    "about themselves, each one short third-person sentence ('The user's dog is called Waffles.'). "
    "No guesses, nothing transient. When a new fact updates one of the CURRENT FACTS, list that "
    'fact\'s number in "replaces". Answer only with JSON: '
    '{"facts": [{"text": "...", "replaces": [2]}]} (an empty list when there is nothing new).'
)
_MAX_CURRENT = 30
_TIMEOUT = 120.0


@dataclass(frozen=True)
class _Source:
    ids: list[uuid.UUID]
    end_user: str | None
    lines: list[str]


def extract(
    engine: Engine,
    embedder: Embedder,
    settings: Settings,
    workspace_id: str,
    item_ids: Sequence[str],
) -> list[uuid.UUID]:
    """New fact ids (none when facts for these messages exist already: idempotent)."""
    if not settings.summary_model:
        return []
    ws = uuid.UUID(workspace_id)
    with Session(engine) as session:
        source = _source(session, ws, [uuid.UUID(i) for i in item_ids])
        if source is None:
            return []
        current = _current(session, ws, source.end_user)
    found = asyncio.run(_ask(settings, source, [c[1] for c in current]))
    if not found:
        return []
    texts = [redact(text_) for text_, _ in found]
    vectors = as_text(embedder.embed([document_text(None, "fact", t, _now()) for t in texts]))
    new_ids = []
    with Session(engine) as session, session.begin():
        for (content, replaces), vector in zip(
            zip(texts, (r for _, r in found), strict=True), vectors, strict=True
        ):
            new_id = uuid.uuid4()
            session.execute(
                _INSERT,
                {
                    "id": new_id, "ws": ws, "user": source.end_user, "content": content,
                    "hash": content_hash(content), "tokens": count_text(content, "gpt-4o"),
                    "sources": source.ids, "vector": vector, "model": embedder.name,
                },
            )  # fmt: skip
            old = [current[n - 1][0] for n in replaces if 1 <= n <= len(current)]
            if old:
                session.execute(_SUPERSEDE, {"new": new_id, "ws": ws, "old": old})
            new_ids.append(new_id)
        session.execute(COUNT_TERMS, {"ids": new_ids})
    return new_ids


def _source(session: Session, ws: uuid.UUID, ids: list[uuid.UUID]) -> _Source | None:
    done = session.scalar(
        text(
            "SELECT 1 FROM memory_items WHERE workspace_id = :ws AND kind = 'fact' "
            "AND source_ids && CAST(:ids AS uuid[]) LIMIT 1"
        ),
        {"ws": ws, "ids": ids},
    )
    if done:
        return None
    rows = session.execute(
        text(
            "SELECT id, role, content, end_user FROM memory_items WHERE workspace_id = :ws "
            "AND id = ANY(CAST(:ids AS uuid[])) AND kind = 'message' ORDER BY position"
        ),
        {"ws": ws, "ids": ids},
    ).all()
    users = [r for r in rows if r.role == "user"]
    if not users:
        return None
    return _Source(
        [r.id for r in rows], users[0].end_user, [f"{r.role}: {r.content}" for r in rows]
    )


def _current(session: Session, ws: uuid.UUID, end_user: str | None) -> list[tuple[uuid.UUID, str]]:
    rows = session.execute(
        text(
            "SELECT id, content FROM memory_items WHERE workspace_id = :ws AND kind = 'fact' "
            "AND superseded_by IS NULL AND end_user IS NOT DISTINCT FROM :user "
            "ORDER BY created_at DESC LIMIT :n"
        ),
        {"ws": ws, "user": end_user, "n": _MAX_CURRENT},
    ).all()
    return [(r.id, r.content) for r in reversed(rows)]


async def _ask(
    settings: Settings, source: _Source, current: list[str]
) -> list[tuple[str, list[int]]]:
    route = Router(provider_config.load(settings)).route(settings.summary_model)
    listing = "\n".join(f"{n}. {fact}" for n, fact in enumerate(current, 1)) or "(none)"
    chat = ChatBody(
        {
            "model": route[0].served,
            "messages": [
                {"role": "system", "content": PROMPT},
                {
                    "role": "user",
                    "content": f"CURRENT FACTS:\n{listing}\n\nNEW MESSAGES:\n"
                    + "\n".join(source.lines),
                },
            ],
            "response_format": {"type": "json_object"},
            "temperature": 0,
        }
    )
    client = ProviderClient(settings)
    await client.start()
    try:
        upstream = await asyncio.wait_for(client.send("/chat/completions", chat, route), _TIMEOUT)
        try:
            body = orjson.loads(await upstream.response.read())
        finally:
            upstream.close()
    finally:
        await client.close()
    return parse(body["choices"][0]["message"]["content"])


def parse(content: Any) -> list[tuple[str, list[int]]]:
    """The model's JSON answer; anything malformed counts as no facts."""
    try:
        data = orjson.loads(content) if isinstance(content, str) else None
    except orjson.JSONDecodeError:
        return []
    facts = data.get("facts") if isinstance(data, dict) else None
    out: list[tuple[str, list[int]]] = []
    for fact in facts if isinstance(facts, list) else []:
        if isinstance(fact, str) and fact.strip():
            out.append((fact.strip(), []))
        elif isinstance(fact, dict) and isinstance(fact.get("text"), str) and fact["text"].strip():
            replaces = [n for n in fact.get("replaces") or [] if isinstance(n, int)]
            out.append((fact["text"].strip(), replaces))
    return out[:20]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


_INSERT = text(
    """
    INSERT INTO memory_items (id, workspace_id, end_user, kind, content, content_hash,
        token_count, metadata, source_ids, embedding, embedding_model)
    VALUES (:id, :ws, :user, 'fact', :content, :hash, :tokens, '{"method": "llm"}',
        CAST(:sources AS uuid[]), CAST(:vector AS vector), :model)
    """
)
_SUPERSEDE = text(
    "UPDATE memory_items SET superseded_by = :new WHERE workspace_id = :ws AND kind = 'fact' "
    "AND id = ANY(CAST(:old AS uuid[])) AND superseded_by IS NULL"
)
