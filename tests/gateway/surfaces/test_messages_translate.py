"""The Messages ↔ chat translators alone: pure functions, no gateway."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.errors import BadRequest
from gateway.surfaces.messages_translate import StreamState, error_body, to_chat, to_message


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            head, data = block.split(b"\n", 1)
            out.append((head.removeprefix(b"event: ").decode(), orjson.loads(data[6:])))
    return out


def test_request_with_system_blocks_images_tools_and_results() -> None:
    chat = to_chat({
        "model": "m", "max_tokens": 10, "stream": True, "top_k": 5,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "AAA"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                 "content": [{"type": "text", "text": "boom"}]},
                {"type": "text", "text": "and now?"}]},
        ],
    })  # fmt: skip
    assert chat["stream_options"] == {"include_usage": True} and "top_k" not in chat
    assert chat["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert chat["messages"][1]["content"][1]["image_url"]["url"] == "data:image/png;base64,AAA"
    call = chat["messages"][2]
    assert call["content"] == "calling" and call["tool_calls"][0]["function"] == {
        "name": "f", "arguments": '{"a":1}'}  # fmt: skip
    assert chat["messages"][3] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": "[tool error] boom",
    }
    assert chat["messages"][4] == {
        "role": "user",
        "content": [{"type": "text", "text": "and now?"}],
    }
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object"}
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (
            {"model": "m", "max_tokens": True, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        (
            {"model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "assistant", "content": [{"type": "tool_result"}]}],
            },
            "messages.0.content.0",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "stop_sequences": "END",
                "messages": [{"role": "user", "content": "x"}],
            },
            "stop_sequences",
        ),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        to_chat(body)
    assert info.value.param == param


def test_answer_with_text_and_tool_call_and_cached_usage() -> None:
    message = to_message({
        "id": "c1", "choices": [{"finish_reason": "tool_calls", "message": {
            "content": "sure", "tool_calls": [
                {"id": "t", "function": {"name": "f", "arguments": '{"q": "x"}'}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7,
                  "prompt_tokens_details": {"cached_tokens": 60}},
    }, "m")  # fmt: skip
    assert [b["type"] for b in message["content"]] == ["text", "tool_use"]
    assert message["content"][1]["input"] == {"q": "x"} and message["stop_reason"] == "tool_use"
    assert message["usage"]["input_tokens"] == 40
    assert message["usage"]["cache_read_input_tokens"] == 60


def test_stream_of_text_then_two_tool_calls() -> None:
    state = StreamState("m", "msg_1")
    raw = state.chunk({"choices": [{"index": 0, "delta": {"content": "hi "}}]})
    raw += state.chunk({"choices": [{"index": 0, "delta": {"content": "there"}}]})
    for i in (0, 1):
        head = {"index": i, "id": f"t{i}", "function": {"name": "f", "arguments": ""}}
        raw += state.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
        part = {"index": i, "function": {"arguments": '{"a": 1}'}}
        raw += state.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [part]}}]})
    raw += state.chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    raw += state.chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    raw += state.end() + state.end()  # a second end adds nothing
    seen = events(raw)
    assert [e for e, _ in seen] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert [d["index"] for e, d in seen if e == "content_block_start"] == [0, 1, 2]
    assert seen[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert seen[-2][1]["usage"]["output_tokens"] == 3


def test_stream_error_event_ends_the_stream() -> None:
    state = StreamState("m", "msg_1")
    raw = state.chunk({"error": {"message": "provider broke off"}})
    assert [e for e, _ in events(raw)] == ["message_start", "error"]
    assert state.end() == b""
    assert error_body(529, "x")["error"]["type"] == "overloaded_error"
