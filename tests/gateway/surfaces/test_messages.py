"""``POST /v1/messages`` driven by the official ``anthropic`` SDK against a live gateway.

Translated to chat completions upstream (the mock provider), with memory captured and recalled
as for chat, usage under the route ``messages``, and every error in Anthropic's shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anthropic
import httpx2 as httpx
import pytest

from tests.conftest import Gateway, Services, Tenant, make_tenant
from tests.gateway.services.test_auth import admin
from tests.memory.test_chat_memory import sent_memory, wait_embedded
from tests.mock_upstream import MockUpstream, Reply

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def claude(gateway: Gateway, tenant: Tenant) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=tenant.key, max_retries=0) as c:
        yield c


def test_create_translates_both_ways(claude: anthropic.Anthropic, mock: MockUpstream) -> None:
    marker = uuid.uuid4().hex[:8]
    message = claude.messages.create(
        model="mock/gpt", max_tokens=64, system="You are terse.", extra_body={"temperature": 0.2},
        stop_sequences=["END"], metadata={"user_id": f"u-{marker}"},
        messages=[{"role": "user", "content": f"hello {marker}"}],
    )  # fmt: skip
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == f"echo: hello {marker}"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    sent = mock.wait_for(lambda r: marker.encode() in r.body).json
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["max_tokens"] == 64 and sent["stop"] == ["END"] and sent["temperature"] == 0.2
    assert sent["user"] == f"u-{marker}"


def test_stream_follows_anthropics_event_order(claude: anthropic.Anthropic) -> None:
    marker = uuid.uuid4().hex[:8]
    with claude.messages.stream(
        model="mock/gpt", max_tokens=64,
        messages=[{"role": "user", "content": f"stream these words please {marker}"}],
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[1] == "content_block_start" and "content_block_stop" in kinds
    assert kinds[-2] == "message_delta"
    assert kinds.count("content_block_delta") >= 2  # the mock streams in pieces
    assert final.content[0].text == f"echo: stream these words please {marker}"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_tool_round_trip(claude: anthropic.Anthropic, mock: MockUpstream) -> None:
    marker = uuid.uuid4().hex[:8]
    tools = [
        {
            "name": "lookup",
            "description": "look a thing up",
            "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}},
        }
    ]
    question = {"role": "user", "content": f"look it up {marker}"}
    first = claude.messages.create(
        model="mock/tool", max_tokens=64, tools=tools, messages=[question]
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "lookup" and use.input == {"x": 1}
    second = claude.messages.create(
        model="mock/tool",
        max_tokens=64,
        tools=tools,
        tool_choice={"type": "none"},
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "forty-two"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    sent = mock.wait_for(lambda r: b"forty-two" in r.body).json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == use.id
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "forty-two"}

    with claude.messages.stream(
        model="mock/tool",
        max_tokens=64,
        tools=tools,
        messages=[question],
    ) as stream:
        final = stream.get_final_message()
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert streamed.name == "lookup" and streamed.input == {"x": 1}
    assert final.stop_reason == "tool_use"


def test_memory_is_captured_and_recalled(
    claude: anthropic.Anthropic, http: httpx.Client, tenant: Tenant, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    thread = f"msg-{marker}"
    raw = claude.messages.with_raw_response.create(
        model="mock/gpt", max_tokens=64, extra_headers={"X-Thread-Id": thread},
        messages=[{"role": "user", "content": "My telescope is named Quasimodo-9."}],
    )  # fmt: skip
    assert raw.headers["x-memory-thread"] == thread
    wait_embedded(http, tenant.key, thread, 2)
    claude.messages.create(
        model="mock/gpt", max_tokens=64, extra_headers={"X-Thread-Id": f"other-{marker}"},
        messages=[{"role": "user", "content": f"What is my telescope called? {marker}"}],
    )  # fmt: skip
    assert "Quasimodo-9" in sent_memory(mock, marker)
    metrics = http.get("/metrics").text
    assert any(
        line.startswith("cmg_requests_total{") and 'route="messages"' in line
        for line in metrics.splitlines()
    )


def test_x_api_key_and_bearer_both_work_and_bad_keys_are_anthropic_401(
    gateway: Gateway, tenant: Tenant
) -> None:
    body = {"model": "mock/gpt", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        for headers in ({"x-api-key": tenant.key, "anthropic-version": "2023-06-01"},
                        {"Authorization": f"Bearer {tenant.key}"}):  # fmt: skip
            assert http.post("/v1/messages", json=body, headers=headers).status_code == 200
        bad = http.post("/v1/messages", json=body, headers={"x-api-key": "cmg_nope"})
    assert bad.status_code == 401
    assert bad.json()["type"] == "error"
    assert bad.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        with anthropic.Anthropic(base_url=gateway.url, api_key="cmg_nope", max_retries=0) as c:
            c.messages.create(model="mock/gpt", max_tokens=8,
                              messages=[{"role": "user", "content": "hi"}])  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        {"model": "mock/gpt", "messages": [{"role": "user", "content": "hi"}]},  # no max_tokens
        {"model": "mock/gpt", "max_tokens": 8, "messages": []},
        {"model": "mock/gpt", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]},
        {
            "model": "mock/gpt",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "video"}]}],
        },
        {
            "model": "mock/gpt",
            "max_tokens": 8,
            "system": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
        {
            "model": "mock/gpt",
            "max_tokens": 8,
            "tool_choice": {"type": "magic"},
            "messages": [{"role": "user", "content": "hi"}],
        },
        {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        [1, 2, 3],
    ],
)
def test_bad_input_is_an_anthropic_400_and_never_forwarded(
    gateway: Gateway, tenant: Tenant, mock: MockUpstream, body: object
) -> None:
    marker = uuid.uuid4().hex
    if isinstance(body, dict):
        body = {**body, "metadata": {"user_id": marker}}
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        response = http.post("/v1/messages", json=body, headers={"x-api-key": tenant.key})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"]
    assert not any(marker.encode() in r.body for r in mock.requests)


def test_upstream_errors_keep_their_status_in_anthropic_shape(
    claude: anthropic.Anthropic, mock: MockUpstream, unique: str
) -> None:
    mock.script(unique, Reply.error(429, headers={"Retry-After": "30"}))
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(
            model=f"alt/{unique}", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "30"
    body = info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"


def test_a_key_at_rpm_2_gets_an_anthropic_429(
    gateway: Gateway, http: httpx.Client, services: Services
) -> None:
    tenant = make_tenant(services)
    assert admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"rpm_limit": 2}).is_success
    body = {"model": "mock/gpt", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": tenant.key, "X-Memory": "off"}
    answers = [http.post("/v1/messages", json=body, headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["type"] == "rate_limit_error"
    assert int(answers[2].headers["retry-after"]) >= 1
