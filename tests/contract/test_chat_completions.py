"""The official openai SDK against a live gateway: shapes, streaming, tools, transparency."""

from __future__ import annotations

import json

import httpx2 as httpx
import openai
import pytest

from tests.conftest import ALT_KEY, UPSTREAM_KEY, Gateway, Tenant
from tests.mock_upstream import MockUpstream
from tests.openapi_schema import validate

USER = [{"role": "user", "content": "hello gateway"}]


def test_completion_matches_openai_schema(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mock/gpt", messages=USER)
    validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello gateway"
    assert raw.headers["x-request-id"]
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0


def test_stream_chunks_match_schema_and_assemble(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock/gpt", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello gateway"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0


def test_tool_calls_round_trip(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    completion = client.chat.completions.create(model="mock/tool", messages=USER, tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"x": 1}
    assert completion.choices[0].finish_reason == "tool_calls"

    stream = client.chat.completions.create(
        model="mock/tool", messages=USER, tools=tools, stream=True
    )
    name, args = "", ""
    for chunk in stream:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name += delta_call.function.name or ""
            args += delta_call.function.arguments or ""
    assert name == "get_weather" and json.loads(args) == {"x": 1}


def test_n_logprobs_and_response_format_pass_through(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="mock/gpt",
        messages=USER,
        n=2,
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
    )
    assert len(completion.choices) == 2
    assert completion.choices[0].logprobs is not None
    assert len(completion.choices[0].logprobs.content[0].top_logprobs) == 2
    assert json.loads(completion.choices[0].message.content) == {"echo": "hello gateway"}


def test_unknown_fields_and_extra_body_reach_the_provider(
    client: openai.OpenAI, mock: MockUpstream, unique: str
) -> None:
    model = f"alt/x-{unique}"
    client.chat.completions.create(
        model=model,
        messages=USER,
        temperature=0.3,
        extra_body={"provider": {"order": ["a", "b"]}, "transforms": ["middle-out"], "zz": 1},
    )
    sent = mock.requests_for(f"x-{unique}")[0].json
    assert sent["provider"] == {"order": ["a", "b"]}
    assert sent["transforms"] == ["middle-out"] and sent["zz"] == 1
    assert sent["temperature"] == 0.3 and sent["messages"] == USER


def test_unchanged_request_body_is_forwarded_byte_for_byte(
    gateway: Gateway, tenant: Tenant, mock: MockUpstream, unique: str
) -> None:
    body = (
        '{ "model" : "mock/gpt",  "messages":[{"role":"user","content":"bytes \\u00e9 '
        + unique
        + '"}], "x_vendor": {"deep": [1, 2.50, null]} }'
    ).encode()
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {tenant.key}"},
    )
    assert r.status_code == 200
    seen = mock.wait_for(lambda rec: unique.encode() in rec.body)
    assert seen.body == body


def test_gateway_sends_its_own_key_never_the_clients(
    client: openai.OpenAI, tenant: Tenant, mock: MockUpstream, unique: str
) -> None:
    client.chat.completions.create(model="mock/gpt", messages=[{"role": "user", "content": unique}])
    seen = mock.wait_for(lambda rec: unique.encode() in rec.body)
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert tenant.key not in json.dumps(seen.headers)

    client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert mock.requests_for(unique)[0].headers["authorization"] == f"Bearer {ALT_KEY}"


def test_alias_resolves_to_its_target(client: openai.OpenAI, mock: MockUpstream) -> None:
    before = len(mock.requests_for("mock/gpt"))
    completion = client.chat.completions.create(model="fast", messages=USER)
    assert completion.model == "mock/gpt"
    assert len(mock.requests_for("mock/gpt")) == before + 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (409, openai.ConflictError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_upstream_status_maps_to_the_sdk_exception(
    client: openai.OpenAI, mock: MockUpstream, unique: str, status: int, error: type[Exception]
) -> None:
    from tests.mock_upstream import Reply

    mock.script(unique, *[Reply.error(status) for _ in range(3)])
    with pytest.raises(error) as info:
        client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    body = info.value.body  # type: ignore[attr-defined]
    assert set(body) == {"message", "type", "param", "code"}


def test_upstream_rejecting_gateway_credentials_is_a_502_not_a_401(
    client: openai.OpenAI, mock: MockUpstream, unique: str
) -> None:
    from tests.mock_upstream import Reply

    mock.script(unique, Reply.error(401))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_auth"  # type: ignore[attr-defined]


def test_4xx_is_relayed_without_retry(
    client: openai.OpenAI, mock: MockUpstream, unique: str
) -> None:
    from tests.mock_upstream import Reply

    mock.script(unique, Reply.error(400, {"error": {"message": "bad temperature", "code": 7}}))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert "bad temperature" in info.value.message
    assert info.value.code == "7"  # type: ignore[attr-defined]
    assert len(mock.requests_for(unique)) == 1
