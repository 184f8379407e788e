"""Settings: the one reader of ``os.environ``.

Every knob is declared once in ``FIELDS`` with its env var, default and help text. ``Settings``
is frozen and built at start (``Settings.from_env()``); tests build ``Settings(...)`` directly.
A test checks that every env var here appears in the README's configuration table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Setting:
    env: str
    help: str


def _s(env: str, help: str, default: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(env, help)})


@dataclass(frozen=True)
class Settings:
    host: str = _s("CMG_HOST", "Address the gateway listens on.", "127.0.0.1")
    port: int = _s("CMG_PORT", "Port the gateway listens on.", 8080)
    workers: int = _s("CMG_WORKERS", "uvicorn worker processes for `cmg serve`.", 1)
    data_dir: Path = _s(
        "CMG_DATA_DIR", "Where embedded PostgreSQL/Redis and local state live.", Path(".cmg")
    )
    database_url: str = _s(
        "DATABASE_URL",
        "PostgreSQL (with pgvector). Unset: embedded PostgreSQL in the data dir.",
        "",
    )
    redis_url: str = _s("REDIS_URL", "Redis. Unset: embedded redis-server in the data dir.", "")
    pg_shared_buffers: str = _s(
        "CMG_PG_SHARED_BUFFERS",
        "Embedded PostgreSQL's shared_buffers (e.g. 512MB). Unset: a quarter of RAM, at most 2GB.",
        "",
    )
    master_key: str = _s(
        "CMG_MASTER_KEY", "Master key for `/admin/*`. Unset: the admin API is closed.", ""
    )
    openrouter_api_key: str = _s("OPENROUTER_API_KEY", "Key for the default provider.", "")
    openrouter_base_url: str = _s(
        "OPENROUTER_BASE_URL", "Base URL of the default provider.", "https://openrouter.ai/api/v1"
    )
    providers_file: str = _s(
        "CMG_PROVIDERS", "Path of a TOML file adding providers, aliases and fallbacks.", ""
    )
    max_body_bytes: int = _s(
        "CMG_MAX_BODY_BYTES", "Largest request body accepted (413 above).", 8 * 1024 * 1024
    )
    max_n: int = _s(
        "CMG_MAX_N",
        "Largest `n` (choices per chat request) a workspace may ask for, unless its `max_n` "
        "setting says otherwise (400 above).",
        16,
    )
    max_completion_tokens: int = _s(
        "CMG_MAX_COMPLETION_TOKENS",
        "Largest `max_tokens` / `max_completion_tokens` a workspace may ask for, unless its "
        "`max_completion_tokens` setting says otherwise (400 above).",
        131072,
    )
    upstream_timeout: float = _s(
        "CMG_UPSTREAM_TIMEOUT", "Seconds to wait for an upstream response (or next chunk).", 600.0
    )
    upstream_connect_timeout: float = _s(
        "CMG_UPSTREAM_CONNECT_TIMEOUT", "Seconds to connect to an upstream.", 10.0
    )
    upstream_retries: int = _s(
        "CMG_UPSTREAM_RETRIES", "Retries per provider on connect errors, 429 and 5xx.", 2
    )
    retry_base_delay: float = _s(
        "CMG_RETRY_BASE_DELAY", "First backoff delay in seconds (doubles, full jitter).", 0.25
    )
    retry_max_delay: float = _s(
        "CMG_RETRY_MAX_DELAY", "Longest wait before a retry, Retry-After included.", 8.0
    )
    console: bool = _s(
        "CMG_CONSOLE",
        "Serve the web console under `/ui` (sign-in with the master or a workspace key).",
        True,
    )
    console_session_seconds: float = _s(
        "CMG_CONSOLE_SESSION_SECONDS",
        "How long a console sign-in lasts (server-side session).",
        28800.0,
    )
    auth_cache_seconds: float = _s(
        "CMG_AUTH_CACHE_SECONDS",
        "Fallback lifetime of a cached key while change notices are down (else a notice drops it).",
        30.0,
    )
    catalog_refresh_seconds: float = _s(
        "CMG_CATALOG_REFRESH_SECONDS",
        "How often a gateway reloads the model catalog while change notices are down.",
        60.0,
    )
    notice_url: str = _s(
        "CMG_NOTICE_URL",
        "PostgreSQL URL the change-notice listener uses (a direct session: LISTEN does not pass "
        "a transaction-mode pooler). Unset: DATABASE_URL.",
        "",
    )
    log_level: str = _s("CMG_LOG_LEVEL", "Log level (debug, info, warning, error).", "info")
    log_format: str = _s("CMG_LOG_FORMAT", "json (one object per line) or text.", "json")
    metrics_port: int = _s(
        "CMG_METRICS_PORT", "Also serve metrics on this port (workers: their only metrics).", 0
    )
    ratelimit_fail_open: bool = _s(
        "CMG_RATELIMIT_FAIL_OPEN", "Let requests through when Redis (the limiter) is down.", True
    )
    usage_flush_seconds: float = _s(
        "CMG_USAGE_FLUSH_SECONDS", "How often buffered usage events are written.", 2.0
    )
    memory_default: str = _s(
        "CMG_MEMORY_DEFAULT",
        "Memory mode when a request and its workspace say nothing: "
        "on, off, read (recall only) or write (capture only).",
        "on",
    )
    memory_max_tokens: int = _s(
        "CMG_MEMORY_MAX_TOKENS", "Token budget of the injected memory message.", 1000
    )
    memory_max_items: int = _s("CMG_MEMORY_MAX_ITEMS", "Most memory items injected.", 8)
    memory_min_similarity: float = _s(
        "CMG_MEMORY_MIN_SIMILARITY",
        "Cosine similarity below which a vector-only hit is not injected.",
        0.35,
    )
    memory_candidates: int = _s(
        "CMG_MEMORY_CANDIDATES", "Candidates per search leg before ranking.", 50
    )
    recall_ranker: str = _s(
        "CMG_RECALL_RANKER",
        "Weights file of the recall ranker (python -m bench.fit_ranker writes it); "
        "unset: the one shipped in memory/data/ranker.json.",
        "",
    )
    memory_wait_seconds: float = _s(
        "CMG_MEMORY_WAIT_SECONDS",
        "Longest `POST /v1/memory/items?wait=true` waits for embeddings (then 202, `pending`).",
        30.0,
    )
    metrics_token: str = _s(
        "CMG_METRICS_TOKEN",
        "When set, `/metrics` on the API port needs `Authorization: Bearer <token>`.",
        "",
    )
    memory_placement: str = _s(
        "CMG_MEMORY_PLACEMENT",
        "Where recalled memory goes, unless a provider says otherwise: user (a text part after "
        "the latest user message's content) or system (a system message right before it).",
        "user",
    )
    cache_control: bool = _s(
        "CMG_CACHE_CONTROL",
        "Mark the end of the stable prompt prefix with an Anthropic cache_control breakpoint "
        "(default provider; others: cache_control in the providers file).",
        False,
    )
    context_window_default: int = _s(
        "CMG_CONTEXT_WINDOW_DEFAULT", "Context window assumed for models the catalog lacks.", 128000
    )
    embedder: str = _s(
        "CMG_EMBEDDER",
        "local (MiniLM int8 ONNX, 384 dims) or openai (any /v1/embeddings).",
        "local",
    )
    embeddings_base_url: str = _s(
        "CMG_EMBEDDINGS_BASE_URL", "Base URL of the OpenAI-compatible embedder.", ""
    )
    embeddings_model: str = _s(
        "CMG_EMBEDDINGS_MODEL", "Model of the OpenAI-compatible embedder.", ""
    )
    embeddings_api_key: str = _s(
        "CMG_EMBEDDINGS_API_KEY", "Key of the OpenAI-compatible embedder.", ""
    )
    embedding_dim: int = _s(
        "CMG_EMBEDDING_DIM", "Vector dimension (fixed when the schema is created).", 384
    )
    embedder_threads: int = _s(
        "CMG_EMBEDDER_THREADS", "onnxruntime threads of the local embedder.", 1
    )
    model_dir: str = _s(
        "CMG_MODEL_DIR",
        "Where the local embedder's quantised model is built once (empty: inside the venv).",
        "",
    )
    summary_model: str = _s(
        "CMG_SUMMARY_MODEL", "Model that writes thread summaries (unset: extractive summaries).", ""
    )
    summary_threshold_tokens: int = _s(
        "CMG_SUMMARY_THRESHOLD_TOKENS", "Unsummarized tokens that trigger a summary refresh.", 2000
    )
    outbox_interval: float = _s(
        "CMG_OUTBOX_INTERVAL_SECONDS", "How often pending outbox rows are pushed to Redis.", 5.0
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["setting"].env)
            if raw is not None and raw != "":
                values[f.name] = _convert(f.type, raw, f.metadata["setting"].env)
        values.update(overrides)
        return cls(**values)

    @property
    def key_file(self) -> Path:
        return self.data_dir / "dev_key"


def _convert(type_name: Any, raw: str, env: str) -> Any:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        raise SystemExit(f"{env}: cannot read {raw!r} as {kind}") from exc
    return raw


def documented() -> list[Setting]:
    """Every setting, for the README table and its test."""
    return [f.metadata["setting"] for f in dataclasses.fields(Settings)]
