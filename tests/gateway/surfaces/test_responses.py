"""``/v1/responses`` driven by the official ``openai`` SDK against a live gateway.

Translated to chat completions upstream (the mock provider); objects and stream events are
validated against the Responses schemas of the OpenAPI spec; stored responses are scoped to the
workspace; memory is captured and recalled as for chat.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import Gateway, Services, Tenant, make_tenant
from tests.memory.test_chat_memory import sent_memory, wait_embedded
from tests.mock_upstream import MockUpstream
from tests.openapi_schema import validate

pytestmark = pytest.mark.usefixtures("worker")

EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
}


def raw_events(gateway: Gateway, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's events as the wire carries them (``event:`` name matching ``type``)."""
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post("/v1/responses", json={**body, "stream": True},
                             headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        if block.strip():
            name, data = block.split("\n", 1)
            event = json.loads(data.removeprefix("data: "))
            assert name == f"event: {event['type']}"
            events.append(event)
    return events


def test_create_retrieve_input_items_delete(client: openai.OpenAI, mock: MockUpstream) -> None:
    marker = uuid.uuid4().hex[:8]
    created = client.responses.with_raw_response.create(
        model="mock/gpt", input=f"hello {marker}", instructions="Be brief.",
        max_output_tokens=50, temperature=0.3, metadata={"case": "one"},
    )  # fmt: skip
    response = created.parse()
    validate("Response", created.http_response.json())
    assert response.output_text == f"echo: hello {marker}"
    assert response.status == "completed" and response.usage and response.usage.input_tokens > 0
    sent = mock.wait_for(lambda r: marker.encode() in r.body).json
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.3
    again = client.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == response.output_text
    items = client.responses.input_items.list(response.id)
    assert items.data[0].content[0].text == f"hello {marker}"  # type: ignore[union-attr]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_previous_response_id_chains_the_conversation(
    client: openai.OpenAI, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    first = client.responses.create(model="mock/gpt", input=f"my name is Ada {marker}")
    second = client.responses.create(
        model="mock/gpt", input=f"what is my name? {marker}", previous_response_id=first.id
    )
    sent = mock.wait_for(lambda r: f"what is my name? {marker}".encode() in r.body).json
    roles = [m["role"] for m in sent["messages"] if m["role"] != "system"]
    assert roles[:3] == ["user", "assistant", "user"]
    assert sent["messages"][-2 if roles[-1] == "user" else -1]["content"] == first.output_text or (
        any(m.get("content") == first.output_text for m in sent["messages"])
    )
    assert second.previous_response_id == first.id
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="mock/gpt", input="x", previous_response_id="resp_nope")


def test_stream_events_validate_and_accumulate(
    client: openai.OpenAI, gateway: Gateway, tenant: Tenant
) -> None:
    marker = uuid.uuid4().hex[:8]
    events = raw_events(gateway, tenant.key, {"model": "mock/gpt", "input": f"many words {marker}"})
    with client.responses.stream(model="mock/gpt", input=f"stream many words {marker}") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") >= 2
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        validate(EVENT_SCHEMAS[event["type"]], event)
    assert final.output_text == f"echo: stream many words {marker}"
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_function_tool_round_trip(
    client: openai.OpenAI, gateway: Gateway, tenant: Tenant, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    tools: Any = [
        {
            "type": "function",
            "name": "lookup",
            "description": "look up",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
        }
    ]
    first = client.responses.create(model="mock/tool", input=f"look {marker}", tools=tools)
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "lookup" and call.arguments == '{"x": 1}'
    second = client.responses.create(
        model="mock/tool", tools=tools, tool_choice="none", previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}],
    )  # fmt: skip
    assert second.output_text
    sent = mock.wait_for(lambda r: b'"42"' in r.body and marker.encode() in r.body).json
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "42"}
    assert sent["messages"][-2]["tool_calls"][0]["id"] == call.call_id

    events = raw_events(gateway, tenant.key, {"model": "mock/tool", "input": "a", "tools": tools})
    with client.responses.stream(model="mock/tool", input=f"look {marker}", tools=tools) as s:
        for _ in s:
            pass
        final = s.get_final_response()
    for event in events:
        validate(EVENT_SCHEMAS[event["type"]], event)
    streamed = next(o for o in final.output if o.type == "function_call")
    assert streamed.name == "lookup" and streamed.arguments == '{"x": 1}'


def test_structured_output_is_asked_upstream(client: openai.OpenAI, mock: MockUpstream) -> None:
    marker = uuid.uuid4().hex[:8]
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    client.responses.create(
        model="mock/gpt", input=f"json please {marker}",
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema}},
    )  # fmt: skip
    sent = mock.wait_for(lambda r: marker.encode() in r.body).json
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == schema


def test_another_workspace_gets_404_for_stored_responses(
    client: openai.OpenAI, gateway: Gateway, services: Services
) -> None:
    mine = client.responses.create(model="mock/gpt", input="private thing")
    other = make_tenant(services)
    with gateway.client(other.key) as theirs:
        with pytest.raises(openai.NotFoundError):
            theirs.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            theirs.responses.delete(mine.id)
        with pytest.raises(openai.NotFoundError):
            theirs.responses.create(model="mock/gpt", input="x", previous_response_id=mine.id)
    assert client.responses.retrieve(mine.id).output_text == mine.output_text


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model="mock/gpt", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_memory_is_captured_and_recalled(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    thread = f"resp-{marker}"
    client.responses.create(model="mock/gpt", input="My boat is called Nautilus-5.",
                            extra_headers={"X-Thread-Id": thread})  # fmt: skip
    wait_embedded(http, tenant.key, thread, 2)
    client.responses.create(model="mock/gpt", input=f"What is my boat called? {marker}",
                            extra_headers={"X-Thread-Id": f"other-{marker}"})  # fmt: skip
    assert "Nautilus-5" in sent_memory(mock, marker)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "mock/gpt", "input": []}, "input"),
        ({"model": "mock/gpt", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "mock/gpt", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"model": "mock/gpt", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"model": "mock/gpt", "input": "x", "previous_response_id": 5}, "previous_response_id"),
    ],
)
def test_bad_input_is_a_400_never_forwarded(
    http: httpx.Client, tenant: Tenant, mock: MockUpstream, body: dict[str, Any], param: str
) -> None:
    marker = uuid.uuid4().hex
    response = http.post("/v1/responses", json={**body, "user": marker},
                         headers={"Authorization": f"Bearer {tenant.key}"})  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not any(marker.encode() in r.body for r in mock.requests)
