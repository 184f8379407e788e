"""The Responses ↔ chat translators alone: pure functions, no gateway."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.errors import BadRequest
from gateway.surfaces.responses_translate import StreamState, assistant_messages, to_chat


def events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(b.split(b"\ndata: ", 1)[1]) for b in raw.split(b"\n\n") if b]


def test_items_become_messages_and_history_comes_first() -> None:
    history = [{"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"}]
    chat, conversation = to_chat({
        "model": "m", "instructions": "be nice", "max_output_tokens": 9, "stream": True,
        "text": {"format": {"type": "json_object"}},
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                         {"type": "input_image", "image_url": "https://x/y.png"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
        ],
    }, history)  # fmt: skip
    assert chat["messages"][0] == {"role": "system", "content": "be nice"}
    assert chat["messages"][1:3] == history and conversation[:2] == history
    assert chat["messages"][3]["content"][1]["image_url"]["url"] == "https://x/y.png"
    assert [c["id"] for c in chat["messages"][4]["tool_calls"]] == ["c1", "c2"]  # one turn
    assert chat["messages"][5] == {"role": "tool", "tool_call_id": "c1", "content": "one"}
    assert chat["max_tokens"] == 9 and chat["stream_options"] == {"include_usage": True}
    assert chat["response_format"] == {"type": "json_object"}
    assert all(m["role"] != "system" for m in conversation)  # instructions are not carried over


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": [{"type": "file_search_call"}]}, "input[0].type"),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "m", "input": "x", "metadata": {"a": 1}}, "metadata"),
        ({"model": "m", "input": "x", "instructions": ["no"]}, "instructions"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        to_chat(body, [])
    assert info.value.param == param


def test_stream_numbers_every_event_and_ends_with_the_whole_response() -> None:
    state = StreamState("resp_1", {"model": "m"}, 0)
    raw = state.start()
    raw += state.chunk({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    raw += state.chunk({"choices": [{"index": 0, "delta": {"content": "b"}}]})
    head = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"x"'}}
    raw += state.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
    tail = {"index": 0, "function": {"arguments": ": 1}"}}
    raw += state.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [tail]}}]})
    raw += state.chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    raw += state.end() + state.end()
    seen = events(raw)
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    final = seen[-1]["response"]
    assert seen[-1]["type"] == "response.completed" and final["output_text"] == "ab"
    assert final["output"][1]["arguments"] == '{"x": 1}' and final["usage"]["total_tokens"] == 5
    assert assistant_messages(final["output"]) == [{
        "role": "assistant", "content": "ab", "tool_calls": [{"id": "call_1", "type": "function",
        "function": {"name": "f", "arguments": '{"x": 1}'}}]}]  # fmt: skip


def test_a_provider_error_mid_stream_is_response_failed() -> None:
    state = StreamState("resp_1", {"model": "m"}, 0)
    raw = state.chunk({"error": {"message": "broke"}})
    [failed] = events(raw)
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["message"] == "broke" and state.end() == b""
