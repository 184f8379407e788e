"""Checks on the upstream mock itself: the official SDK parses it and the spec accepts its JSON.

Every other suite trusts the mock to look like OpenAI, so these tests pin that it does: the SDK
points straight at it, and raw wire payloads are validated against the OpenAPI schemas.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from tests.mock_upstream import MockUpstream, Reply
from tests.openapi_schema import validate

HELLO: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]
TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
]


@pytest.fixture
def upstream() -> Iterator[MockUpstream]:
    with MockUpstream() as mock:
        yield mock


@pytest.fixture
def client(upstream: MockUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.base_url, api_key="x", max_retries=0, timeout=5) as sdk:
        yield sdk


def post(upstream: MockUpstream, path: str, body: bytes) -> tuple[int, str, bytes]:
    """POST raw bytes; returns status, content type and the body, errors included."""
    request = urllib.request.Request(
        upstream.base_url + path, data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


def sse_payloads(raw: bytes) -> list[Any]:
    lines = [line.removeprefix(b"data: ") for line in raw.split(b"\n\n") if line]
    assert lines[-1] == b"[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_chat_completion_echoes_the_last_user_message(
    upstream: MockUpstream, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mock/gpt", messages=HELLO)
    validate("CreateChatCompletionResponse", json.loads(raw.text))
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "mock/gpt"
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    (recorded,) = upstream.requests_for("mock/gpt")
    assert recorded.headers["authorization"] == "Bearer x"
    assert recorded.json["messages"] == HELLO
    # the client can hold the whole answer a moment before the mock's thread marks it written
    upstream.wait_for(lambda r: r is recorded and r.completed)


def test_stream_chunks_validate_and_end_with_a_usage_chunk(upstream: MockUpstream) -> None:
    body = {"model": "mock/gpt", "messages": HELLO, "stream": True}
    body["stream_options"] = {"include_usage": True}
    status, content_type, raw = post(upstream, "/chat/completions", json.dumps(body).encode())
    assert status == 200 and content_type.startswith("text/event-stream")
    chunks = sse_payloads(raw)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == "echo: hello there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_sdk_stream_without_usage_option_has_no_usage_chunk(client: openai.OpenAI) -> None:
    with client.chat.completions.create(model="mock/gpt", messages=HELLO, stream=True) as stream:
        chunks = list(stream)
    assert len(chunks) > 3 and all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello there"


def test_n_choices_are_numbered_in_both_modes(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="mock/gpt", messages=HELLO, n=2)
    assert [c.message.content for c in completion.choices] == [
        "echo: hello there",
        "echo: hello there #1",
    ]
    texts = ["", ""]
    with client.chat.completions.create(
        model="mock/gpt", messages=HELLO, n=2, stream=True
    ) as stream:
        for chunk in stream:
            texts[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    assert texts == ["echo: hello there", "echo: hello there #1"]


def test_tools_produce_a_tool_call_in_both_modes(
    upstream: MockUpstream, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock/tool", messages=HELLO, tools=TOOLS
    )
    validate("CreateChatCompletionResponse", json.loads(raw.text))
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"x": 1}

    body = {"model": "mock/tool", "messages": HELLO, "tools": TOOLS, "stream": True}
    chunks = sse_payloads(post(upstream, "/chat/completions", json.dumps(body).encode())[2])
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["id"] == call.id and deltas[0]["function"]["name"] == "lookup"
    assert "".join(d["function"]["arguments"] for d in deltas) == call.function.arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_none_answers_with_text(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="mock/tool", messages=HELLO, tools=TOOLS, tool_choice="none"
    )
    assert completion.choices[0].message.content == "echo: hello there"


def test_logprobs_and_json_mode_follow_the_request(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock/gpt",
        messages=HELLO,
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
    )
    validate("CreateChatCompletionResponse", json.loads(raw.text))
    choice = raw.parse().choices[0]
    assert json.loads(choice.message.content or "") == {"echo": "hello there"}
    assert choice.logprobs is not None and choice.logprobs.content
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content


def test_scripted_429_raises_rate_limit_then_default_resumes(
    upstream: MockUpstream, client: openai.OpenAI
) -> None:
    upstream.script("mock/gpt", Reply.error(429, headers={"retry-after": "1"}))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mock/gpt", messages=HELLO)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "1"
    assert client.chat.completions.create(model="mock/gpt", messages=HELLO).choices


def test_reset_mid_stream_raises_a_connection_error(
    upstream: MockUpstream, client: openai.OpenAI
) -> None:
    upstream.script("mock/gpt", Reply.reset_after(2))
    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIConnectionError):
        with client.chat.completions.create(model="mock/gpt", messages=HELLO, stream=True) as s:
            received.extend(s)
    assert len(received) == 2
    assert not upstream.requests[0].completed


def test_stream_error_event_raises_api_error(upstream: MockUpstream, client: openai.OpenAI) -> None:
    upstream.script("mock/gpt", Reply.stream_error_after(1))
    with pytest.raises(openai.APIError, match="scripted"):
        with client.chat.completions.create(model="mock/gpt", messages=HELLO, stream=True) as s:
            list(s)


def test_closed_connection_raises_a_connection_error(
    upstream: MockUpstream, client: openai.OpenAI
) -> None:
    upstream.script("mock/gpt", Reply.close_connection())
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="mock/gpt", messages=HELLO)


def test_client_leaving_a_slow_stream_is_recorded(
    upstream: MockUpstream, client: openai.OpenAI
) -> None:
    upstream.script("mock/gpt", Reply.slow_stream(20, 0.1))
    with client.chat.completions.create(model="mock/gpt", messages=HELLO, stream=True) as s:
        assert next(s).choices[0].delta.role == "assistant"
        assert next(s).choices[0].delta.content == "part0 "
    recorded = upstream.wait_for(lambda r: r.disconnected)
    assert not recorded.completed


def test_client_timeout_during_delay_is_recorded(
    upstream: MockUpstream, client: openai.OpenAI
) -> None:
    upstream.script("mock/gpt", Reply.delay(2))
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="mock/gpt", messages=HELLO, timeout=0.2)
    upstream.wait_for(lambda r: r.disconnected)


def test_invalid_json_body_gets_an_openai_shaped_400(upstream: MockUpstream) -> None:
    status, _, raw = post(upstream, "/chat/completions", b"{not json")
    assert status == 400
    assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}
    assert upstream.requests[0].body == b"{not json" and upstream.requests[0].json is None


def test_models_list_and_retrieve(upstream: MockUpstream, client: openai.OpenAI) -> None:
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", json.loads(raw.text))
    assert [m.id for m in raw.parse()] == ["mock/gpt", "mock/small", "mock/tool"]
    assert client.models.retrieve("mock/small").model_dump()["context_length"] == 2048
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("mock/missing")


def test_embeddings_are_deterministic_in_both_encodings(upstream: MockUpstream) -> None:
    body = {"model": "mock/embed", "input": ["a", "b", "a"], "dimensions": 4}
    status, _, raw = post(upstream, "/embeddings", json.dumps(body).encode())
    payload = json.loads(raw)
    validate("CreateEmbeddingResponse", payload)
    vectors = [item["embedding"] for item in payload["data"]]
    assert status == 200 and len(vectors[0]) == 4 and vectors[0] == vectors[2] != vectors[1]
    with openai.OpenAI(base_url=upstream.base_url, api_key="x", max_retries=0) as sdk:
        decoded = sdk.embeddings.create(model="mock/embed", input="a", dimensions=4)  # base64
    assert decoded.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)


def test_schema_validation_rejects_a_broken_completion(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mock/gpt", messages=HELLO)
    payload = json.loads(raw.text)
    del payload["choices"]
    with pytest.raises(jsonschema.ValidationError):
        validate("CreateChatCompletionResponse", payload)
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    with pytest.raises(jsonschema.ValidationError):
        validate("CreateChatCompletionStreamResponse", {**chunk, "choices": [{"index": 0}]})
