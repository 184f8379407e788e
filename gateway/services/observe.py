"""Around every request: request id, metrics, one structured log line.

One pure ASGI middleware (no per-request tasks, no body buffering). Handlers fill in the
request's ``Observation`` (workspace, key, model, provider, upstream timings, tokens, memory);
when the last byte is sent the middleware records metrics and logs one JSON line. It never
logs an API key or message content.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_log = logging.getLogger("cmg.access")


@dataclass
class Observation:
    request_id: str
    route: str
    workspace: str | None = None
    key_id: str | None = None
    model: str | None = None
    model_label: str | None = None  # ``model`` bounded for metric labels (chat.model_label)
    provider: str | None = None
    upstream_s: float | None = None
    ttft_s: float | None = None
    attempts: int = 0
    fallback: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    cost_usd: float | None = None
    memory_items: int | None = None
    memory_tokens: int | None = None
    recall_s: float | None = None
    error_code: str | None = None


def observation(request: Request) -> Observation:
    obs: Observation = request.scope["state"]["obs"]
    return obs


class Observe:
    def __init__(self, app: ASGIApp, labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.app = app
        self.labels = labels  # (path prefix, route label), longest first: routes.labels()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            await _reject_nul(send)
            return
        obs = Observation(_request_id(scope), _route(scope["path"], self.labels))
        scope.setdefault("state", {})["obs"] = obs
        scope["state"]["request_id"] = obs.request_id
        header = (b"x-request-id", obs.request_id.encode())
        status = 500
        streaming = False
        first_body: float | None = None

        async def observed_send(message: Message) -> None:
            nonlocal status, streaming, first_body
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                headers.append(header)
                streaming = any(
                    k == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers
                )
            elif (
                message["type"] == "http.response.body"
                and first_body is None
                and message.get("body")
            ):
                first_body = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - started
            if streaming and first_body is not None:
                obs.ttft_s = first_body - started
            self._record(obs, status, elapsed)

    def _record(self, obs: Observation, status: int, elapsed: float) -> None:
        provider = obs.provider or "none"
        route = obs.route
        child = metrics.child
        child(metrics.REQUESTS, route, str(status), obs.model_label or "none", provider).inc()
        child(metrics.DURATION, route).observe(elapsed)
        if obs.upstream_s is not None:
            child(metrics.UPSTREAM, provider).observe(obs.upstream_s)
            metrics.OVERHEAD.observe(max(0.0, elapsed - obs.upstream_s))
        if obs.ttft_s is not None:
            child(metrics.TTFT, provider).observe(obs.ttft_s)
        if status == 401 and obs.error_code:
            child(metrics.AUTH_FAILURES, obs.error_code).inc()
        if route in ("metrics", "health") or not access_log.isEnabledFor(logging.INFO):
            return  # probes are counted, not logged
        line = {
            "request_id": obs.request_id, "route": route, "workspace": obs.workspace,
            "key_id": obs.key_id, "model": obs.model, "provider": obs.provider,
            "status": status, "latency_ms": round(elapsed * 1000, 2),
            "upstream_ms": _ms(obs.upstream_s), "ttft_ms": _ms(obs.ttft_s),
            "attempts": obs.attempts, "fallback": obs.fallback,
            "prompt_tokens": obs.prompt_tokens, "completion_tokens": obs.completion_tokens,
            "cached_tokens": obs.cached_tokens, "cost_usd": obs.cost_usd,
            "memory_items": obs.memory_items, "memory_tokens": obs.memory_tokens,
            "recall_ms": _ms(obs.recall_s), "error_code": obs.error_code,
        }  # fmt: skip
        handler = _json_handler
        if handler is None:
            access_log.info("request", extra={"fields": line})
            return
        # The JSON formatter's output without a LogRecord: one write, same shape.
        head = {"ts": round(time.time(), 3), "level": "info", "logger": "cmg.access"}
        text = orjson.dumps({**head, "msg": "request", **line}).decode()
        handler.acquire()
        try:
            handler.stream.write(text + "\n")
            handler.flush()
        finally:
            handler.release()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


async def _reject_nul(send: Send) -> None:
    body = orjson.dumps(
        {"error": {"message": "NUL characters are not allowed in the path or query",
                   "type": "invalid_request_error", "param": None, "code": "invalid_value"}}
    )  # fmt: skip
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-request-id", os.urandom(16).hex().encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return os.urandom(16).hex()


def _route(path: str, labels: tuple[tuple[str, str], ...]) -> str:
    for prefix, name in labels:
        if path.startswith(prefix):
            return name
    return "other"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        text: str = orjson.dumps(line, default=str).decode()
        return text


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(fields)s", defaults={"fields": ""}
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    global _json_handler
    # The access line is written straight to this handler (see Observe._record) as long as
    # nothing else is attached to the access logger.
    access = logging.getLogger("cmg.access")
    plain = fmt == "json" and not access.handlers and access.propagate
    _json_handler = handler if plain else None


_json_handler: logging.StreamHandler | None = None  # type: ignore[type-arg]
