"""The request protocol: parse what the gateway needs, keep every other byte untouched.

A ``ChatRequest`` holds the client's raw body and its parsed object. The gateway validates
only ``model``, ``messages`` and ``stream`` (and, once the workspace is known, ``n`` and
``max_tokens`` against its caps); every other field (known or not, ``extra_body`` included) is
forwarded verbatim. When nothing changes, the original bytes are forwarded.

``model`` is bounded here, before it reaches any cache, router, token counter or metric: at most
``MODEL_MAX_LENGTH`` characters of letters, digits and ``._:/@+-~=`` (every provider id we know
fits; a 1 MB name is a 400, not a cache entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request

from core.errors import BadRequest, BodyTooLarge

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MODEL_MAX_LENGTH = 256
_MODEL = re.compile(rf"[A-Za-z0-9._:/@+~=\-]{{1,{MODEL_MAX_LENGTH}}}")
# Completion-size fields a workspace caps (the OpenAI name first, its legacy alias second).
_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens")


def parse_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, or a 400 that says what was wrong (invalid UTF-8 included)."""
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "invalid UTF-8" if "utf-8" in str(exc).lower() else "malformed JSON"
        raise BadRequest(
            f"could not parse the request body: {reason}", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return body


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise BadRequest("you must provide a model parameter", param="model", code="missing_model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("model must be a non-empty string", param="model", code="invalid_type")
    if _MODEL.fullmatch(model) is None:  # the message never echoes the (maybe huge) name
        raise BadRequest(
            f"model must be 1-{MODEL_MAX_LENGTH} characters of letters, digits and ._:/@+~=-",
            param="model",
            code="invalid_value",
        )
    return model


@dataclass
class ChatRequest:
    raw: bytes
    body: dict[str, Any]
    model: str
    stream: bool
    changed: bool = field(default=False)

    @classmethod
    def parse(cls, raw: bytes) -> ChatRequest:
        return cls.of(parse_object(raw), raw)

    @classmethod
    def of(cls, body: dict[str, Any], raw: bytes | None = None) -> ChatRequest:
        """A request from its parsed body (a surface's translation: encoded once, not parsed
        back), checked as ``parse`` checks the client's."""
        model = require_model(body)
        _check_messages(body.get("messages"))
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("stream must be a boolean", param="stream", code="invalid_type")
        raw = orjson.dumps(body) if raw is None else raw
        return cls(raw=raw, body=body, model=model, stream=bool(stream))

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body["messages"]
        return messages

    @property
    def include_usage(self) -> bool:
        opts = self.body.get("stream_options")
        return isinstance(opts, dict) and opts.get("include_usage") is True

    def with_model(self, model: str) -> ChatRequest:
        """The same request for another upstream model id (alias, prefix or fallback)."""
        if model == self.model and not self.changed:
            return self
        return ChatRequest(self.raw, {**self.body, "model": model}, model, self.stream, True)

    def with_messages(self, messages: list[dict[str, Any]]) -> ChatRequest:
        return ChatRequest(
            self.raw, {**self.body, "messages": messages}, self.model, self.stream, True
        )

    @property
    def n(self) -> int:
        """Choices asked for (validated by ``check_caps``; 1 when absent)."""
        n = self.body.get("n")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1

    def check_caps(self, max_n: int, max_completion: int) -> None:
        """400 naming the field when ``n`` or a completion-size field is invalid or over cap."""
        _check_count(self.body.get("n"), "n", max_n)
        for name in _TOKEN_FIELDS:
            _check_count(self.body.get(name), name, max_completion)

    def payload(self) -> bytes:
        if not self.changed:
            return self.raw
        try:
            return orjson.dumps(self.body)
        except TypeError as exc:  # nested deeper than orjson writes (it reads deeper)
            raise BadRequest("request body is nested too deeply", code="invalid_json") from exc


@dataclass(frozen=True)
class ForwardBody:
    """A JSON request forwarded untouched but for its model id (``/v1/embeddings``)."""

    raw: bytes
    body: dict[str, Any]
    model: str
    changed: bool = False

    def with_model(self, model: str) -> ForwardBody:
        if model == self.model and not self.changed:
            return self
        return ForwardBody(self.raw, {**self.body, "model": model}, model, True)

    def payload(self) -> bytes:
        return orjson.dumps(self.body) if self.changed else self.raw


def _check_count(value: Any, param: str, cap: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{param} must be a positive integer", param=param, code="invalid_type")
    if value > cap:
        raise BadRequest(
            f"{param} must be at most {cap} in this workspace", param=param, code="above_cap"
        )


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise BadRequest(
            "you must provide a messages parameter", param="messages", code="missing_messages"
        )
    if not isinstance(messages, list):
        raise BadRequest("messages must be an array", param="messages", code="invalid_type")
    if not messages:
        raise BadRequest("messages must not be empty", param="messages", code="empty_array")
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{param} must be an object", param=param, code="invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(
                f"{param}.role must be one of {', '.join(sorted(ROLES))}",
                param=f"{param}.role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(
                f"{param}.content must be a string, an array of parts or null",
                param=f"{param}.content",
                code="invalid_type",
            )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes", code="body_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)
