"""Native pass-through: ``/v1/responses`` and ``/v1/messages`` sent in their own format to a
provider marked ``responses = "native"`` / ``messages = "native"`` in the providers file.

The request still runs the chat pipeline (``chat.complete``): its messages, translated to chat
form, drive the limits, the memory plan, recall and capture exactly as in translate mode; only
the forward and the relay differ. What goes upstream is the client's own body, its model id
routed and the recalled block placed as chat places it (``CMG_MEMORY_PLACEMENT``: ``user``, a
text part after the latest user turn's content; ``system``, a system item before that turn for
Responses, a last ``system`` block for Messages), so whatever the gateway does not translate
(built-in tools, reasoning, ``include``, thinking) reaches the provider as sent. The answer
comes back byte for byte; a tap reads its text, tool calls and usage for memory and accounting.

A route is native only when every target on it is (fallbacks included): a body in one
provider's format cannot fall back to a provider that does not read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from core.providers.router import Target
from gateway.services.protocol import ForwardBody
from gateway.services.streaming import StreamTap, assistant_message
from memory.service import Recalled

Answer = tuple[dict[str, Any] | None, dict[str, Any] | None]  # (assistant message, chat usage)


def is_native(route: Sequence[Target], surface: str) -> bool:
    """Whether every target of ``route`` serves ``surface`` (``responses`` or ``messages``)."""
    return all(getattr(target.provider, surface) == "native" for target in route)


@dataclass
class Native:
    """How ``chat.complete`` forwards and reads one request in the surface's own format."""

    path: str  # under the provider's base URL: "/responses" or "/messages"
    raw: bytes  # the client's body, forwarded as is when no memory goes in
    body: dict[str, Any]
    place: Callable[[dict[str, Any], str, str], dict[str, Any]]  # (body, block, form) → body
    answer: Callable[[Any], Answer]  # the JSON answer → what memory and usage need

    def payload(self, model: str, recalled: Recalled | None) -> ForwardBody:
        block = recalled.injected.message if recalled is not None else None
        if block is None or recalled is None or recalled.placement is None:
            return ForwardBody(self.raw, self.body, model)
        body = self.place(self.body, block["content"], recalled.placement.form)
        return ForwardBody(orjson.dumps(body), body, model, changed=True)


def _last_user(items: list[Any]) -> int | None:
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        if isinstance(item, dict) and item.get("role") == "user":
            return index
    return None


def _with_part(content: Any, part: dict[str, Any], kind: str) -> list[Any]:
    parts = [{"type": kind, "text": content}] if isinstance(content, str) and content else []
    return [*(content if isinstance(content, list) else parts), part]


# --- Responses ---


def place_responses(body: dict[str, Any], block: str, form: str) -> dict[str, Any]:
    value = body.get("input")
    items: list[Any] = (
        [{"role": "user", "content": value}]
        if isinstance(value, str)
        else [*(value if isinstance(value, list) else [])]
    )
    last = _last_user(items)
    if last is None:
        items.append({"role": "system", "content": block})
    elif form == "system":
        items.insert(last, {"role": "system", "content": block})
    else:
        part = {"type": "input_text", "text": block}
        items[last] = {**items[last], "content": _with_part(items[last].get("content"), part,
                                                            "input_text")}  # fmt: skip
    return {**body, "input": items}


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """A Responses ``usage`` in chat form (cached input tokens included in the prompt)."""
    if not isinstance(usage, dict) or not _count(usage.get("input_tokens")):
        return None
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": _or_zero(usage.get("output_tokens")),
        "prompt_tokens_details": {"cached_tokens": _or_zero(cached)},
    }


def responses_answer(obj: Any) -> Answer:
    """A Response object's output as one assistant message (text and function calls)."""
    if not isinstance(obj, dict):
        return None, None
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in _list(obj.get("output")):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in _list(item.get("content")):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    text.append(part["text"])
        elif item.get("type") == "function_call":
            calls.append(_call(item.get("call_id"), item.get("name"), item.get("arguments")))
    return assistant_message("".join(text), calls), responses_usage(obj.get("usage"))


class ResponsesTap(StreamTap):
    """Reads Responses events; ``final`` is the finished Response object (to store)."""

    def __init__(self) -> None:
        super().__init__()
        self.final: dict[str, Any] | None = None
        self.sequence = 0

    def observe(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type")
        if _count(chunk.get("sequence_number")):
            self.sequence = chunk["sequence_number"]
        if kind == "response.output_text.delta" and isinstance(chunk.get("delta"), str):
            self.texts.setdefault(0, []).append(chunk["delta"])
        elif kind == "response.output_item.done" and isinstance(chunk.get("item"), dict):
            item = chunk["item"]
            if item.get("type") == "function_call":
                calls = self.tool_calls.setdefault(0, {})
                call = _call(item.get("call_id"), item.get("name"), item.get("arguments"))
                calls[len(calls)] = {"id": call["id"], "type": "function",
                                     **call["function"]}  # fmt: skip
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = _dict(chunk.get("response"))
            self.final, self.done = response, True
            self.usage = responses_usage(response.get("usage"))
            self.model = response.get("model") or self.model
            if kind == "response.failed":
                self.error = response.get("error") or {"message": "the response failed"}
        elif kind == "error":
            self.error, self.done = {"message": chunk.get("message")}, True

    def error_event(self, message: str, type: str, code: str | None) -> bytes:
        self.sequence += 1
        data = {"type": "error", "code": code, "message": message, "param": None,
                "sequence_number": self.sequence}  # fmt: skip
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


# --- Messages ---


def place_messages(body: dict[str, Any], block: str, form: str) -> dict[str, Any]:
    messages = list(body.get("messages") or [])
    last = _last_user(messages)
    part = {"type": "text", "text": block}
    if form == "system" or last is None:
        return {**body, "system": _with_part(body.get("system"), part, "text")}
    messages[last] = {**messages[last], "content": _with_part(messages[last].get("content"), part,
                                                              "text")}  # fmt: skip
    return {**body, "messages": messages}


def messages_usage(usage: Any) -> dict[str, Any] | None:
    """Anthropic's ``usage`` in chat form: the prompt is uncached + cache read + cache write."""
    if not isinstance(usage, dict) or not _count(usage.get("input_tokens")):
        return None
    read = _or_zero(usage.get("cache_read_input_tokens"))
    written = _or_zero(usage.get("cache_creation_input_tokens"))
    return {
        "prompt_tokens": usage["input_tokens"] + read + written,
        "completion_tokens": _or_zero(usage.get("output_tokens")),
        "prompt_tokens_details": {"cached_tokens": read},
    }


def messages_answer(message: Any) -> Answer:
    """A Message's content blocks as one assistant message (text and tool uses)."""
    if not isinstance(message, dict):
        return None, None
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _list(message.get("content")):
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(_call(block.get("id"), block.get("name"), arguments))
    return assistant_message("".join(text), calls), messages_usage(message.get("usage"))


class MessagesTap(StreamTap):
    """Reads Anthropic's stream events: text and tool-use deltas, usage, ``message_stop``."""

    def __init__(self) -> None:
        super().__init__()
        self._usage: dict[str, Any] = {}

    def observe(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type")
        index = _or_zero(chunk.get("index"))
        if kind == "message_start" and isinstance(chunk.get("message"), dict):
            self.model = chunk["message"].get("model") or self.model
            self._add_usage(chunk["message"].get("usage"))
        elif kind == "content_block_start" and isinstance(chunk.get("content_block"), dict):
            block = chunk["content_block"]
            if block.get("type") == "tool_use":
                self.tool_calls.setdefault(0, {})[index] = {
                    "id": str(block.get("id") or ""), "type": "function",
                    "name": str(block.get("name") or ""), "arguments": "",
                }  # fmt: skip
        elif kind == "content_block_delta" and isinstance(chunk.get("delta"), dict):
            self._delta(index, chunk["delta"])
        elif kind == "message_delta":
            self._add_usage(chunk.get("usage"))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            error = chunk.get("error")
            self.error = error if isinstance(error, dict) else {"message": "stream error"}

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            self.texts.setdefault(0, []).append(delta["text"])
        elif delta.get("type") == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            call = self.tool_calls.get(0, {}).get(index)
            if call is not None:
                call["arguments"] += delta["partial_json"]

    def _add_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if _count(v)})
            self.usage = messages_usage(self._usage)

    def error_event(self, message: str, type: str, code: str | None) -> bytes:
        data = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


# --- shared ---


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _or_zero(value: Any) -> int:
    return int(value) if _count(value) else 0


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {
        "id": str(call_id or ""),
        "type": "function",
        "function": {"name": str(name or ""), "arguments": str(arguments or "{}")},
    }
