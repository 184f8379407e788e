"""OpenAI Responses ↔ chat completions, as pure functions (no I/O, unit-tested alone).

``to_chat`` turns a Responses request (plus the conversation of its ``previous_response_id``)
into a chat-completions body; ``to_response`` builds the Response object from a chat answer;
``StreamState`` turns chat SSE chunks into the Responses event stream (``response.created``,
``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta``, ``response.function_call_arguments.delta``, the matching
``.done`` events and ``response.completed`` with usage).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from core.errors import BadRequest

_ROLES = ("user", "system", "developer", "assistant")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_messages(value: Any) -> list[dict[str, Any]]:
    """Chat messages for a request's ``input`` (a string or a list of items)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRequest("input: a string or a non-empty array of items", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: an object is expected", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = _call(item, where)
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                raise BadRequest(f"{where}: call_id and output strings are required", param=where)
            out.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue
        else:
            raise BadRequest(f"{where}.type: {kind!r} is not supported", param=f"{where}.type")
    return out


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise BadRequest(f"{where}.role: one of {', '.join(_ROLES)}", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: a string or an array", param=f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            param = f"{where}.content[{j}]"
            raise BadRequest(f"{param}: unsupported content part {kind!r}", param=param)
    if role == "assistant":
        return {"role": role, "content": "".join(p.get("text", "") for p in parts)}
    return {"role": role, "content": parts}


def _call(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
        raise BadRequest(f"{where}: call_id, name and arguments strings are required", param=where)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def to_chat(body: Any, history: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Any]]:
    """(chat body, the conversation to store: history + this input, without instructions)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: a non-empty string is required", param="model")
    conversation = history + input_messages(body.get("input"))
    messages = list(conversation)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("instructions: a string", param="instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"model": model, "messages": messages}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    text = body.get("text")
    if isinstance(text, dict) and text.get("format") is not None:
        fmt = _format(text["format"])
        if fmt is not None:
            chat["response_format"] = fmt
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise BadRequest("metadata: an object of strings", param="metadata")
    if (
        isinstance(metadata, dict)
        and isinstance(metadata.get("user_id"), str)
        and "user" not in chat
    ):
        chat["user"] = metadata["user_id"]
    return chat, conversation


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools: an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequest(f"tools[{i}]: only function tools are supported, not {kind!r}",
                             param=f"tools[{i}]")  # fmt: skip
        if not isinstance(tool.get("name"), str):
            raise BadRequest(f"tools[{i}].name: a string is required", param=f"tools[{i}].name")
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("name"), str)
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest("tool_choice: auto, none, required or a function", param="tool_choice")


def _format(fmt: Any) -> dict[str, Any] | None:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        schema.setdefault("name", "response")
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest("text.format: text, json_object or json_schema", param="text.format")


def output_items(message: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The Responses output items of a chat answer message."""
    if not isinstance(message, dict):
        return []
    items: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        items.append(_text_item(new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        items.append({"type": "function_call", "id": new_id("fc"), "call_id": call.get("id") or "",
                      "name": function.get("name") or "", "arguments":
                      function.get("arguments") or "", "status": "completed"})  # fmt: skip
    return items


def _text_item(item_id: str, text: str) -> dict[str, Any]:
    content = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
            "content": [content]}  # fmt: skip


def assistant_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages a stored response's output adds to its conversation."""
    text = "".join(
        c.get("text", "") for item in output if item.get("type") == "message"
        for c in item.get("content", [])
    )  # fmt: skip
    calls = [
        {"id": i["call_id"], "type": "function",
         "function": {"name": i["name"], "arguments": i["arguments"]}}
        for i in output if i.get("type") == "function_call"
    ]  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message] if text or calls else []


def usage(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict) or not isinstance(chat_usage.get("prompt_tokens"), int):
        return None
    prompt, completion = chat_usage["prompt_tokens"], chat_usage.get("completion_tokens") or 0
    details = chat_usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": cached if isinstance(cached, int) else 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_object(
    resp_id: str, body: dict[str, Any], output: list[dict[str, Any]], status: str,
    usage_: dict[str, Any] | None, created: int,
) -> dict[str, Any]:  # fmt: skip
    """The Response object, echoing the request's settings as OpenAI does."""
    text = "".join(
        c["text"] for i in output if i["type"] == "message" for c in i["content"]
    )  # fmt: skip
    obj: dict[str, Any] = {
        "id": resp_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"),
        "output": output,
        "output_text": text,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_echo_tool(t) for t in body.get("tools") or []],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
    }
    if usage_ is not None:  # the schema has no null usage: absent until it is known
        obj["usage"] = usage_
    return obj


def _echo_tool(tool: Any) -> Any:
    """A function tool as the Response echoes it (``strict`` and ``parameters`` always there)."""
    if not isinstance(tool, dict):
        return tool
    return {"strict": None, "parameters": None, **tool}


def sse(data: dict[str, Any]) -> bytes:
    kind: str = data["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamState:
    """Chat chunks in, Responses events out; ``output`` holds the finished items at the end."""

    def __init__(self, resp_id: str, body: dict[str, Any], created: int) -> None:
        self.id, self.body, self.created = resp_id, body, created
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text_item: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> output item
        self.usage: dict[str, Any] | None = None
        self.finished = False
        self.failed: str | None = None

    def _event(self, data: dict[str, Any]) -> bytes:
        data["sequence_number"] = self.seq
        self.seq += 1
        return sse(data)

    def start(self) -> bytes:
        snapshot = response_object(self.id, self.body, [], "in_progress", None, self.created)
        return self._event({"type": "response.created", "response": snapshot}) + self._event(
            {"type": "response.in_progress", "response": snapshot}
        )

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if isinstance(chunk.get("error"), dict):
            return self.fail(str(chunk["error"].get("message") or "the provider stream failed"))
        out = b""
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
        return out

    def _text(self, piece: str) -> bytes:
        out = b""
        if self.text_item is None:
            self.text_item = _text_item(new_id("msg"), "")
            self.text_item["status"] = "in_progress"
            self.text_item["content"] = []
            self.output.append(self.text_item)
            index = len(self.output) - 1
            out += self._event({"type": "response.output_item.added", "output_index": index,
                                "item": dict(self.text_item, content=[])})  # fmt: skip
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self.text_item["content"].append(part)
            out += self._event({"type": "response.content_part.added", "item_id":
                                self.text_item["id"], "output_index": index, "content_index": 0,
                                "part": dict(part)})  # fmt: skip
        self.text_item["content"][0]["text"] += piece
        index = self.output.index(self.text_item)
        return out + self._event({"type": "response.output_text.delta", "item_id":
                                  self.text_item["id"], "output_index": index,
                                  "content_index": 0, "delta": piece, "logprobs": []})  # fmt: skip

    def _call(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            item = {"type": "function_call", "id": new_id("fc"), "call_id": call.get("id") or
                    new_id("call"), "name": function.get("name") or "", "arguments": "",
                    "status": "in_progress"}  # fmt: skip
            self.calls[index] = item
            self.output.append(item)
            added = {"type": "response.output_item.added", "output_index": len(self.output) - 1}
            out += self._event({**added, "item": dict(item)})
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            item["arguments"] += piece
            out += self._event({"type": "response.function_call_arguments.delta", "item_id":
                                item["id"], "output_index": self.output.index(item),
                                "delta": piece})  # fmt: skip
        return out

    def end(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = b""
        for index, item in enumerate(self.output):
            item["status"] = "completed"
            if item["type"] == "message":
                part = item["content"][0]
                out += self._event({"type": "response.output_text.done", "item_id": item["id"],
                                    "output_index": index, "content_index": 0,
                                    "text": part["text"], "logprobs": []})  # fmt: skip
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                out += self._event({"type": "response.content_part.done", **where, "part": part})
            else:
                out += self._event({"type": "response.function_call_arguments.done", "item_id":
                                    item["id"], "output_index": index, "name": item["name"],
                                    "arguments": item["arguments"]})  # fmt: skip
            out += self._event({"type": "response.output_item.done", "output_index": index,
                                "item": item})  # fmt: skip
        final = self.final()
        return out + self._event({"type": "response.completed", "response": final})

    def final(self) -> dict[str, Any]:
        status = "failed" if self.failed else "completed"
        obj = response_object(self.id, self.body, self.output, status, self.usage, self.created)
        if self.failed:
            obj["error"] = {"code": "server_error", "message": self.failed}
        return obj

    def fail(self, message: str) -> bytes:
        self.finished = True
        self.failed = message
        return self._event({"type": "response.failed", "response": self.final()})
