"""Anthropic Messages ↔ chat completions, as pure functions (no I/O, unit-tested alone).

``to_chat`` turns a Messages request into a chat-completions body the pipeline runs unchanged
(memory, limits, usage); ``to_message`` turns the chat answer back into a Message; ``StreamState``
turns the chat SSE chunks into Anthropic's event sequence: ``message_start``, then per content
block ``content_block_start`` / ``content_block_delta``* / ``content_block_stop``, then
``message_delta`` (stop reason, output tokens) and ``message_stop``.
"""

from __future__ import annotations

from typing import Any

import orjson

from core.errors import BadRequest

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "stream": "stream"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape for an HTTP status."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def to_chat(body: Any) -> dict[str, Any]:
    """A chat-completions body for a Messages request; a ``BadRequest`` names what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: a non-empty string is required", param="model")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: a positive integer is required", param="max_tokens")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequest("messages: a non-empty array is required", param="messages")
    chat: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    messages = _system(body.get("system"))
    for i, message in enumerate(raw_messages):
        messages += _message(message, f"messages.{i}")
    chat["messages"] = messages
    for src, dst in _SAMPLING.items():
        if body.get(src) is not None:
            chat[dst] = body[src]
    if body.get("stream") is True:
        chat["stream_options"] = {"include_usage": True}
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences: an array of strings", param="stop_sequences")
        chat["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    return chat


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        parts = [_text_part(block, f"system.{i}") for i, block in enumerate(system)]
        return [{"role": "system", "content": parts}]
    raise BadRequest("system: a string or an array of text blocks", param="system")


def _text_part(block: Any, param: str) -> dict[str, Any]:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise BadRequest(f"{param}: a text block is expected", param=param)
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"{param}.text: a string is required", param=f"{param}.text")
    part: dict[str, Any] = {"type": "text", "text": text}
    if isinstance(block.get("cache_control"), dict):  # a client's breakpoint stays where it is
        part["cache_control"] = block["cache_control"]
    return part


def _message(message: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise BadRequest(f"{param}: an object is expected", param=param)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise BadRequest(f"{param}.role: 'user' or 'assistant'", param=f"{param}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(
            f"{param}.content: a string or an array of blocks", param=f"{param}.content"
        )
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        where = f"{param}.content.{i}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, where))
        elif kind == "image" and role == "user":
            parts.append(_image(block, where))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, where))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, where))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # reasoning the provider gave back: nothing a chat model takes as input
        else:
            raise BadRequest(f"{where}: unsupported block {kind!r} for {role}", param=where)
    out: list[dict[str, Any]] = list(results)  # tool answers first: they reply to the last turn
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        reply: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            reply["tool_calls"] = calls
        if text or calls:
            out.append(reply)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if (
        isinstance(source, dict)
        and source.get("type") == "url"
        and isinstance(source.get("url"), str)
    ):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise BadRequest(f"{param}.source: a base64 or url image source", param=f"{param}.source")


def _tool_call(block: dict[str, Any], param: str) -> dict[str, Any]:
    ident, name = block.get("id"), block.get("name")
    if not isinstance(ident, str) or not isinstance(name, str):
        raise BadRequest(f"{param}: tool_use needs an id and a name", param=param)
    arguments = orjson.dumps(block.get("input", {})).decode()
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_result(block: dict[str, Any], param: str) -> dict[str, Any]:
    ident = block.get("tool_use_id")
    if not isinstance(ident, str):
        raise BadRequest(f"{param}.tool_use_id: a string is required", param=f"{param}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        content = "".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    if not isinstance(content, str):
        raise BadRequest(f"{param}.content: a string or text blocks", param=f"{param}.content")
    if block.get("is_error") is True:
        content = f"[tool error] {content}"
    return {"role": "tool", "tool_call_id": ident, "content": content}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools: an array is expected", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise BadRequest(f"tools.{i}: a tool needs a name", param=f"tools.{i}")
        function: dict[str, Any] = {"name": tool["name"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        schema = tool.get("input_schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise BadRequest(f"tools.{i}.input_schema: an object", param=f"tools.{i}.input_schema")
        function["parameters"] = schema
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest("tool_choice: auto, any, none or {type: tool, name}", param="tool_choice")


def to_message(chat: Any, model: str) -> dict[str, Any]:
    """A Message for a chat-completions answer."""
    choice = (chat.get("choices") or [{}])[0] if isinstance(chat, dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or "", "name":
                        function.get("name") or "", "input": _arguments(function)})  # fmt: skip
    usage = chat.get("usage") if isinstance(chat, dict) else None
    return {
        "id": "msg_" + str(chat.get("id") or "") if isinstance(chat, dict) else "msg_",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": _usage(usage),
    }


def _arguments(function: dict[str, Any]) -> Any:
    try:
        value = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) else 0
    return {
        "input_tokens": max((prompt if isinstance(prompt, int) else 0) - cached, 0),
        "output_tokens": completion if isinstance(completion, int) else 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamState:
    """Chat chunks in, Anthropic events out; one per response stream."""

    def __init__(self, model: str, message_id: str) -> None:
        self.model, self.id = model, message_id
        self.started = False
        self.block = -1  # index of the open content block, -1 when none is open
        self.open_kind: str | None = None
        self.tools: dict[int, int] = {}  # chat tool-call index -> block index
        self.stop_reason = "end_turn"
        self.usage: dict[str, int] = _usage(None)
        self.finished = False

    def start(self) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": self.usage,
        }  # fmt: skip
        return sse("message_start", {"type": "message_start", "message": message})

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self.start()
        if isinstance(chunk.get("error"), dict):
            message = str(chunk["error"].get("message") or "the provider stream failed")
            self.finished = True
            return out + sse("error", error_body(502, message))
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._open("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or []:
                out += self._tool(call)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def end(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = b"" if self.started else self.start()
        out += self._close()
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        out += sse("message_delta", {"type": "message_delta", "delta": delta, "usage": self.usage})
        return out + sse("message_stop", {"type": "message_stop"})

    def _tool(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self.tools:
            out += self._close()
            self.block += 1
            self.tools[index] = self.block
            self.open_kind = "tool_use"
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id") or f"toolu_{index}",
                     "name": function.get("name") or "", "input": {}}  # fmt: skip
            out += sse("content_block_start", {"type": "content_block_start", "index": self.block,
                                               "content_block": block})  # fmt: skip
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments and self.tools[index] == self.block:
            out += self._delta({"type": "input_json_delta", "partial_json": arguments})
        return out

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        if self.open_kind == kind:
            return b""
        out = self._close()
        self.block += 1
        self.open_kind = kind
        start = {"type": "content_block_start", "index": self.block, "content_block": block}
        return out + sse("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        body = {"type": "content_block_delta", "index": self.block, "delta": delta}
        return sse("content_block_delta", body)

    def _close(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.block})
