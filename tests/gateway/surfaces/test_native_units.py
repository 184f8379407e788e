"""The native pass-through's pure parts: where the memory block goes in each format, and how
answers, usage and stream events are read back for memory and accounting."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.surfaces.native import (
    MessagesTap,
    ResponsesTap,
    messages_answer,
    messages_usage,
    place_messages,
    place_responses,
    responses_answer,
    responses_usage,
)

BLOCK = "<memory>the user owns a kayak</memory>"


def test_responses_block_goes_after_the_latest_user_turn_or_before_it() -> None:
    body = {"model": "m", "input": "hi", "instructions": "Be brief."}
    placed = place_responses(body, BLOCK, "user")
    assert placed["input"] == [{"role": "user", "content": [
        {"type": "input_text", "text": "hi"}, {"type": "input_text", "text": BLOCK}]}]  # fmt: skip
    assert placed["instructions"] == "Be brief." and body["input"] == "hi"  # not mutated
    items: list[Any] = [
        {"role": "user", "content": "first"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        {"type": "function_call_output", "call_id": "c", "output": "42"},
    ]
    system = place_responses({"input": items}, BLOCK, "system")["input"]
    assert system[2] == {"role": "system", "content": BLOCK} and system[3] == items[2]
    user = place_responses({"input": items}, BLOCK, "user")["input"]
    assert user[2]["content"][-1] == {"type": "input_text", "text": BLOCK}
    assert user[:2] == items[:2] and user[3] == items[3]  # the prefix is left byte for byte
    only_outputs = [{"type": "function_call_output", "call_id": "c", "output": "42"}]
    assert place_responses({"input": only_outputs}, BLOCK, "user")["input"][-1] == {
        "role": "system", "content": BLOCK}  # fmt: skip


def test_messages_block_goes_in_the_user_turn_or_last_in_system() -> None:
    body: dict[str, Any] = {"system": "Be brief.", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "1"}]},
    ]}  # fmt: skip
    user = place_messages(body, BLOCK, "user")
    assert user["messages"][2]["content"][-1] == {"type": "text", "text": BLOCK}
    assert user["messages"][2]["content"][0]["type"] == "tool_result"
    assert user["system"] == "Be brief." and user["messages"][:2] == body["messages"][:2]
    system = place_messages(body, BLOCK, "system")
    assert system["system"] == [{"type": "text", "text": "Be brief."},
                                {"type": "text", "text": BLOCK}]  # fmt: skip
    assert system["messages"] == body["messages"]
    assert place_messages({"messages": []}, BLOCK, "user")["system"] == [
        {"type": "text", "text": BLOCK}]  # fmt: skip


def test_usage_in_chat_form() -> None:
    assert responses_usage({"input_tokens": 30, "output_tokens": 5,
                            "input_tokens_details": {"cached_tokens": 12}}) == {
        "prompt_tokens": 30, "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 12}}  # fmt: skip
    # Anthropic counts cache reads and writes apart from input_tokens: the prompt is all three
    assert messages_usage({"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 100,
                           "cache_creation_input_tokens": 7}) == {
        "prompt_tokens": 117, "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 100}}  # fmt: skip
    for odd in (None, {}, {"input_tokens": "9"}, {"input_tokens": -1}, {"input_tokens": True}):
        assert responses_usage(odd) is None and messages_usage(odd) is None


def test_answers_become_one_assistant_message() -> None:
    response = {"output": [
        {"type": "reasoning", "summary": []},
        {"type": "message", "content": [{"type": "output_text", "text": "It is "},
                                        {"type": "output_text", "text": "sunny."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
        "junk",
    ], "usage": {"input_tokens": 3, "output_tokens": 2}}  # fmt: skip
    message, usage = responses_answer(response)
    assert message == {
        "role": "assistant",
        "content": "It is sunny.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
    }
    assert usage is not None and usage["prompt_tokens"] == 3
    anthropic = {
        "content": [
            {"type": "thinking", "thinking": "hmm"},
            {"type": "text", "text": "ok"},
            {"type": "tool_use", "id": "t1", "name": "g", "input": {"b": 2}},
        ]
    }
    message, usage = messages_answer(anthropic)
    assert message is not None and message["content"] == "ok" and usage is None
    assert orjson.loads(message["tool_calls"][0]["function"]["arguments"]) == {"b": 2}
    assert responses_answer("not an object") == (None, None)
    assert messages_answer({"content": []}) == (None, None)


def test_responses_tap_reads_text_calls_usage_and_the_final_object() -> None:
    tap = ResponsesTap()
    final = {"id": "resp_1", "model": "m", "usage": {"input_tokens": 4, "output_tokens": 2}}
    for event in (
        {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1"}},
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": "he"},
        {"type": "response.output_text.delta", "sequence_number": 2, "delta": "llo"},
        {"type": "response.output_item.done", "sequence_number": 3, "item": {
            "type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}},
        {"type": "response.completed", "sequence_number": 4, "response": final},
    ):  # fmt: skip
        assert not tap.done
        tap.observe(event)
    assert tap.done and tap.final == final and tap.text() == "he" + "llo"
    assert tap.usage == {"prompt_tokens": 4, "completion_tokens": 2,
                         "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
    assert tap.tool_calls[0][0]["name"] == "f" and tap.error is None
    event = orjson.loads(tap.error_event("broke off", "upstream_error", "stream_error").split(
        b"data: ", 1)[1])  # fmt: skip
    assert event == {"type": "error", "code": "stream_error", "message": "broke off",
                     "param": None, "sequence_number": 5}  # fmt: skip


def test_messages_tap_reads_deltas_tool_input_and_usage() -> None:
    tap = MessagesTap()
    for event in (
        {"type": "message_start", "message": {"model": "claude", "usage": {
            "input_tokens": 9, "output_tokens": 1, "cache_read_input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "t1", "name": "g", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {
            "type": "input_json_delta", "partial_json": '{"b": '}},
        {"type": "content_block_delta", "index": 1, "delta": {
            "type": "input_json_delta", "partial_json": "2}"}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {
            "output_tokens": 6}},
        {"type": "message_stop"},
    ):  # fmt: skip
        tap.observe(event)
    assert tap.done and tap.text() == "Hi" and tap.model == "claude"
    assert tap.tool_calls[0][1] == {"id": "t1", "type": "function", "name": "g",
                                    "arguments": '{"b": 2}'}  # fmt: skip
    assert tap.usage == {"prompt_tokens": 12, "completion_tokens": 6,
                         "prompt_tokens_details": {"cached_tokens": 3}}  # fmt: skip
    error = tap.error_event("broke off", "upstream_error", None)
    assert error.startswith(b"event: error\n") and b'"api_error"' in error
