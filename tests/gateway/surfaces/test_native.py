"""Native pass-through: ``/v1/responses`` and ``/v1/messages`` reach a provider marked
``responses = "native"`` / ``messages = "native"`` in their own format (the ``native`` provider of
the session's providers file: the mock, which serves both), through the official SDKs.

What the provider received is the client's body (model routed, memory placed); what the client
gets is the provider's answer; memory, usage and stored responses work as in translate mode.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.conftest import ALT_KEY, Gateway, Services, Tenant, make_tenant
from tests.gateway.surfaces.test_responses import EVENT_SCHEMAS
from tests.memory.test_chat_memory import wait_embedded
from tests.mock_upstream import MockUpstream, Recorded, Reply
from tests.openapi_schema import validate

pytestmark = pytest.mark.usefixtures("worker")

PARAMETERS = {"type": "object", "properties": {"x": {"type": "integer"}}}
TOOLS: Any = [{"type": "function", "name": "lookup", "description": "look up",
               "parameters": PARAMETERS}]  # fmt: skip


@pytest.fixture
def claude(gateway: Gateway, tenant: Tenant) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=tenant.key, max_retries=0) as c:
        yield c


def _received(mock: MockUpstream, marker: str) -> Recorded:
    return mock.wait_for(lambda r: marker.encode() in r.body and r.method == "POST")


def test_responses_go_upstream_as_sent_and_come_back_as_the_provider_wrote_them(
    client: openai.OpenAI, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    raw = client.responses.with_raw_response.create(
        model="native/gpt", input=f"hello {marker}", instructions="Be brief.",
        include=["reasoning.encrypted_content"], metadata={"case": "native"},
    )  # fmt: skip
    response = raw.parse()
    seen = _received(mock, marker)
    assert seen.path == "/v1/responses" and seen.headers["authorization"] == f"Bearer {ALT_KEY}"
    # the body as the client sent it: fields the translation would drop reach the provider
    assert seen.json["model"] == "gpt" and seen.json["instructions"] == "Be brief."
    assert seen.json["include"] == ["reasoning.encrypted_content"]
    assert response.id.startswith("resp_mock") and response.output_text == f"echo: hello {marker}"
    validate("Response", raw.http_response.json())
    assert raw.headers["x-cmg-provider"] == "native"
    # stored under the provider's id, for this workspace
    assert client.responses.retrieve(response.id).output_text == response.output_text
    assert client.responses.input_items.list(response.id).data


def test_a_native_chain_forwards_previous_response_id_once_vouched_for(
    client: openai.OpenAI, gateway: Gateway, services: Services, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    first = client.responses.create(model="native/gpt", input=f"first {marker}")
    second = client.responses.create(
        model="native/gpt", input=f"second {marker}", previous_response_id=first.id
    )
    sent = mock.wait_for(lambda r: f"second {marker}".encode() in r.body).json
    assert sent["previous_response_id"] == first.id and sent["input"] == f"second {marker}"
    assert second.output_text == f"echo: second {marker}"
    # another workspace cannot chain on it, though the provider (shared) knows the id
    other = make_tenant(services)
    with gateway.client(other.key) as theirs, pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="native/gpt", input="x", previous_response_id=first.id)
    chained = [
        r
        for r in mock.requests
        if isinstance(r.json, dict) and r.json.get("previous_response_id") == first.id
    ]
    assert len(chained) == 1  # only ours reached the provider


def test_a_native_stream_is_relayed_and_stored_before_it_completes(
    client: openai.OpenAI, gateway: Gateway, tenant: Tenant, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        reply = http.post("/v1/responses", headers={"Authorization": f"Bearer {tenant.key}"},
                          json={"model": "native/gpt", "input": f"streamed words {marker}",
                                "stream": True})  # fmt: skip
    events = []
    for block in reply.text.split("\n\n"):
        if block.strip():
            name, data = block.split("\n", 1)
            event = json.loads(data.removeprefix("data: "))
            assert name == f"event: {event['type']}"
            validate(EVENT_SCHEMAS[event["type"]], event)
            events.append(event)
    assert events[-1]["type"] == "response.completed"
    final_id = events[-1]["response"]["id"]
    assert client.responses.retrieve(final_id).output_text == f"echo: streamed words {marker}"
    with client.responses.stream(model="native/tool", input=f"look {marker}", tools=TOOLS) as s:
        for _ in s:
            pass
        final = s.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    assert call.name == "lookup" and call.arguments == '{"x": 1}'
    # the round trip: the call's output goes back on the chain, as sent
    output = {"type": "function_call_output", "call_id": call.call_id, "output": f"42 {marker}"}
    client.responses.create(model="native/tool", tools=TOOLS, tool_choice="none",
                            previous_response_id=final.id, input=[output])  # fmt: skip
    sent = _received(mock, f"42 {marker}").json
    assert sent["input"][0] == output and sent["previous_response_id"] == final.id
    # no user turn in this request: recalled memory, if any, closes the input as a system item
    assert all(item["role"] == "system" for item in sent["input"][1:])


def test_memory_is_placed_in_the_native_body_and_captured_from_its_answer(
    client: openai.OpenAI, claude: anthropic.Anthropic, http: httpx.Client, tenant: Tenant,
    mock: MockUpstream,
) -> None:  # fmt: skip
    marker = uuid.uuid4().hex[:8]
    thread = f"native-{marker}"
    client.responses.create(model="native/gpt", input="My kayak is called Orca-77.",
                            extra_headers={"X-Thread-Id": thread})  # fmt: skip
    view = wait_embedded(http, tenant.key, thread, 2)
    assert [m["content"] for m in view["messages"]] == [
        "My kayak is called Orca-77.", "echo: My kayak is called Orca-77."
    ]  # fmt: skip
    client.responses.create(model="native/gpt", input=f"What is my kayak called? {marker}",
                            extra_headers={"X-Thread-Id": f"r-{marker}"})  # fmt: skip
    sent = _received(mock, f"kayak called? {marker}").json
    last = sent["input"][-1]  # user placement: a part after the user's own words
    assert last["content"][0] == {
        "type": "input_text",
        "text": f"What is my kayak called? {marker}",
    }
    assert "Orca-77" in last["content"][-1]["text"]
    claude.messages.create(
        model="native/gpt", max_tokens=64, extra_headers={"X-Thread-Id": f"m-{marker}"},
        messages=[{"role": "user", "content": f"Name my kayak again {marker}"}],
    )  # fmt: skip
    sent = _received(mock, f"kayak again {marker}").json
    assert sent["messages"][-1]["content"][0]["text"] == f"Name my kayak again {marker}"
    assert "Orca-77" in sent["messages"][-1]["content"][-1]["text"]


def test_messages_go_upstream_as_sent_with_anthropics_headers(
    claude: anthropic.Anthropic, mock: MockUpstream, http: httpx.Client, tenant: Tenant
) -> None:
    marker = uuid.uuid4().hex[:8]
    raw = claude.messages.with_raw_response.create(
        model="native/gpt", max_tokens=64, system="Be brief.", stop_sequences=["END"],
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": f"hello {marker}"}],
    )  # fmt: skip
    message = raw.parse()
    seen = _received(mock, marker)
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == ALT_KEY and seen.headers["anthropic-version"]
    assert seen.json["model"] == "gpt" and seen.json["system"] == "Be brief."
    assert seen.json["thinking"] == {"type": "enabled", "budget_tokens": 1024}  # untranslatable
    assert message.content[0].type == "text" and message.content[0].text == f"echo: hello {marker}"
    assert message.id.startswith("msg_mock") and message.usage.output_tokens > 0
    with claude.messages.stream(
        model="native/tool", max_tokens=64, tools=[{"name": "lookup", "input_schema": PARAMETERS}],
        messages=[{"role": "user", "content": f"look {marker}"}],
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"x": 1}
    deadline = time.monotonic() + 10  # usage is written in batches
    while True:
        usage = http.get("/v1/usage", params={"group_by": "route"},
                         headers={"Authorization": f"Bearer {tenant.key}"}).json()  # fmt: skip
        if any(row["route"] == "messages" and row["requests"] >= 2 for row in usage["data"]):
            break
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)


def test_a_route_with_a_translate_fallback_is_translated(
    client: openai.OpenAI, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    response = client.responses.create(model="native/mixed", input=f"mixed {marker}")
    seen = _received(mock, marker)
    assert seen.path == "/v1/chat/completions" and seen.json["model"] == "mixed"
    assert response.output_text == f"echo: mixed {marker}"


def test_provider_errors_come_back_in_the_surfaces_shape(
    claude: anthropic.Anthropic, client: openai.OpenAI, mock: MockUpstream
) -> None:
    mock.script("gpt", Reply.error(400, {"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long"}}))  # fmt: skip
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="native/gpt", max_tokens=64,
                               messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert caught.value.status_code == 400 and "prompt is too long" in str(caught.value)
    with pytest.raises(openai.NotFoundError):  # our store vouches before the provider is asked
        client.responses.create(model="native/gpt", input="x", previous_response_id="resp_nope")
