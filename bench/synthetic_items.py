"""Bulk memory for the recall latency bench: realistic text, synthetic vectors, loaded by COPY.

Embedding 200k texts with the local model would take most of an hour here, so rows are written
straight into ``memory_items`` with binary COPY. The text is real-looking: a turn of the eval's
generated conversations (``bench/conversations.py``), often followed by a sentence of words drawn
from a Zipf law over the MiniLM vocabulary (roughly frequency-ordered English), so the tsvector,
the GIN index and ``term_stats`` see a natural spread of common and rare lexemes. The vectors are
synthetic: by default random normal, normalised, 384-d; with ``semantic`` (``turn_vectors``) the
real MiniLM vector of the item's turn (a few thousand distinct turns, embedded once) plus random
noise. Random vectors have no cluster structure at all: HNSW then finds only 5-15% of the true
20 nearest and visits far more of the graph than it would for real embeddings.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from bench import conversations
from memory.keys import item_keys
from memory.neighbours import INDEX_VERSION, QUOTE_CHARS

DIM = 384
_VOCAB = Path(__file__).resolve().parents[1] / "memory" / "data" / "minilm-tokenizer.json"
_COLUMNS = (
    "id, workspace_id, thread_id, end_user, kind, role, content, content_hash, token_count, "
    "metadata, created_at, embedding, embedding_model"
)
_TYPES = ["uuid", "uuid", "text", "text", "text", "text", "text", "text", "int4", "jsonb",
          "timestamptz", "vector", "text"]  # fmt: skip
TERM_STATS = """
    INSERT INTO term_stats (workspace_id, lexeme, df)
    SELECT workspace_id, lexeme, count(*)
    FROM memory_items, unnest(tsvector_to_array(tsv)) AS lexeme
    WHERE workspace_id = ANY(%s) AND embedding IS NOT NULL
    GROUP BY 1, 2
"""


class Texts:
    """Turns of the generated conversations, half of them with a Zipf-sampled sentence added."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        data = conversations.build(personas=60, seed=seed)
        self.turns = [(t.role, t.content) for t in data.turns]
        self.questions = sorted({q.text for q in data.questions})
        vocab = json.loads(_VOCAB.read_text())["model"]["vocab"]
        words = sorted(vocab.items(), key=lambda kv: kv[1])
        self._words = [w for w, _ in words if w.isalpha() and w.isascii() and len(w) >= 3]
        weights = 1.0 / np.arange(1, len(self._words) + 1)
        self._cum = np.cumsum(weights / weights.sum())
        self.last_turn = 0

    def sentence(self, low: int = 6, high: int = 25) -> str:
        n = self._rng.randint(low, high)
        picks = np.searchsorted(self._cum, [self._rng.random() for _ in range(n)])
        return " ".join(self._words[min(int(i), len(self._words) - 1)] for i in picks) + "."

    def item(self) -> tuple[str, str]:
        self.last_turn = self._rng.randrange(len(self.turns))  # what choice() draws, too
        role, content = self.turns[self.last_turn]
        if self._rng.random() < 0.5:
            content = f"{content} {self.sentence().capitalize()}"
        return role, content

    def queries(self, n: int) -> list[str]:
        """Half eval-style questions, half user turns (what chat recall searches with)."""
        users = sorted({c for r, c in self.turns if r == "user"})
        picked = self._rng.sample(self.questions, min(n // 2, len(self.questions)))
        picked += self._rng.sample(users, n - len(picked))
        return [f"{q} {self.sentence(1, 3)}" if self._rng.random() < 0.3 else q for q in picked]


def turn_vectors(texts: Texts, embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """The real embedding of every turn ``Texts`` draws from (``load(semantic=...)``)."""
    contents = [content for _, content in texts.turns]
    return np.vstack([embed(contents[i : i + 256]) for i in range(0, len(contents), 256)])


def load(
    conn: psycopg.Connection, workspace_id: str, count: int, texts: Texts, *, users: int,
    seed: int, model: str = "synthetic-normal-384", semantic: np.ndarray | None = None,
) -> float:  # fmt: skip
    """COPY ``count`` rows into one workspace; seconds taken (commit included).

    Vectors are random unit vectors, or with ``semantic`` (``turn_vectors``) the real vector of
    the item's turn plus noise (cosine ~0.9 to it): the structure real embeddings have.
    """
    register_vector(conn)
    started = time.perf_counter()
    with conn.cursor() as cur:
        with cur.copy(f"COPY memory_items ({_COLUMNS}) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(_TYPES)
            for row in _rows(workspace_id, count, texts, users=users, seed=seed, model=model,
                             semantic=semantic):  # fmt: skip
                copy.write_row(row)
    conn.commit()
    return time.perf_counter() - started


# What the embed job writes per item (memory.neighbours, memory.keys), for a COPY-loaded table:
# every conversation's neighbours by window functions, keys in Python, both in bulk.
_CONTEXT = f"""
UPDATE memory_items AS m
SET context = c.context, context_ids = c.ids, index_version = {INDEX_VERSION}
FROM (
    SELECT id,
        nullif(concat_ws(E'\\n', left(lag(content) OVER w, {QUOTE_CHARS}),
                         left(lead(content) OVER w, {QUOTE_CHARS})), '') AS context,
        array_remove(ARRAY[lag(id) OVER w, lead(id) OVER w], NULL) AS ids
    FROM memory_items
    WHERE kind IN ('message', 'note')
    WINDOW w AS (PARTITION BY workspace_id, coalesce(thread_id, ''), coalesce(end_user, '')
                 ORDER BY created_at, coalesce(position, -1), id)
) AS c
WHERE m.id = c.id
"""


def index_context(conn: psycopg.Connection) -> None:
    conn.execute(_CONTEXT)
    conn.execute("CREATE TEMP TABLE item_keys (id uuid, keys text[]) ON COMMIT DROP")
    rows = conn.execute("SELECT id, content, created_at FROM memory_items").fetchall()
    with conn.cursor() as cur, cur.copy("COPY item_keys (id, keys) FROM STDIN") as copy:
        for item_id, content, created_at in rows:
            copy.write_row((item_id, item_keys(content, created_at)))
    conn.execute("UPDATE memory_items AS m SET keys = k.keys FROM item_keys AS k WHERE m.id = k.id")
    conn.commit()


_NOISE = 0.5  # |noise| relative to the unit turn vector: cosine 1/sqrt(1 + 0.25) ~ 0.89


def _rows(
    workspace_id: str, count: int, texts: Texts, *, users: int, seed: int, model: str,
    semantic: np.ndarray | None,
) -> Iterator[tuple[object, ...]]:  # fmt: skip
    rng = np.random.default_rng(seed)
    ws = uuid.UUID(workspace_id)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for chunk in range(0, count, 4096):
        size = min(4096, count - chunk)
        vectors = rng.standard_normal((size, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i in range(size):
            n = chunk + i
            role, content = texts.item()
            if semantic is not None:
                vector = semantic[texts.last_turn] + _NOISE * vectors[i]
                vectors[i] = vector / np.linalg.norm(vector)
            user = f"user-{n % users:04d}"
            yield (
                uuid.uuid4(), ws, f"{user}-t{(n // users) // 20}", user, "message", role,
                content, hashlib.sha256(content.encode()).hexdigest(), len(content) // 4,
                {}, start + timedelta(minutes=n), vectors[i], model,
            )  # fmt: skip
