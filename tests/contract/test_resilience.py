"""Retries, fallbacks, timeouts and broken streams, as the SDK client experiences them."""

from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import Gateway, Tenant
from tests.mock_upstream import MockUpstream, Reply

USER = [{"role": "user", "content": "hello gateway"}]


def test_5xx_is_retried_then_succeeds(
    client: openai.OpenAI, mock: MockUpstream, unique: str
) -> None:
    mock.script(unique, Reply.error(502))
    completion = client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert completion.choices[0].message.content == "echo: hello gateway"
    assert len(mock.requests_for(unique)) == 2


def test_retry_after_is_honoured(client: openai.OpenAI, mock: MockUpstream, unique: str) -> None:
    mock.script(unique, Reply.error(429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert time.monotonic() - started >= 0.9
    assert len(mock.requests_for(unique)) == 2


def test_retry_after_beyond_the_cap_is_relayed_with_its_header(
    client: openai.OpenAI, mock: MockUpstream, unique: str
) -> None:
    mock.script(unique, Reply.error(429, headers={"Retry-After": "30"}))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert info.value.response.headers["retry-after"] == "30"
    assert len(mock.requests_for(unique)) == 1


def test_fallback_model_answers_when_the_primary_keeps_failing(
    client: openai.OpenAI, mock: MockUpstream
) -> None:
    before_backup = len(mock.requests_for("backup"))
    mock.script("flaky", Reply.error(500), Reply.error(500))
    raw = client.chat.completions.with_raw_response.create(model="alt/flaky", messages=USER)
    assert raw.parse().model == "backup"
    assert len(mock.requests_for("backup")) == before_backup + 1


def test_connect_failure_falls_back_to_another_provider(
    client: openai.OpenAI, mock: MockUpstream
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="dead/model", messages=USER)
    assert raw.headers["x-cmg-provider"] == "openrouter"
    assert raw.parse().model == "mock/gpt"


def test_connect_failure_without_fallback_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="dead/nothing", messages=USER)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"  # type: ignore[attr-defined]


def test_closed_connection_is_retried(
    client: openai.OpenAI, mock: MockUpstream, unique: str
) -> None:
    mock.script(unique, Reply.close_connection())
    completion = client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert completion.choices[0].message.content == "echo: hello gateway"


def test_slow_upstream_is_a_504(client: openai.OpenAI, mock: MockUpstream, unique: str) -> None:
    mock.script(unique, Reply.delay(4))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert info.value.status_code == 504
    assert info.value.body["type"] == "timeout"  # type: ignore[index]


def test_malformed_upstream_json_is_a_502(
    client: openai.OpenAI, mock: MockUpstream, unique: str
) -> None:
    mock.script(unique, Reply.raw(200, b'{"id": "x", "choices": [tru'))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=f"alt/{unique}", messages=USER)
    assert info.value.status_code == 502
    assert info.value.code == "bad_upstream_json"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "reply",
    [Reply.stream_error_after(2), Reply.reset_after(2), Reply.malformed_sse()],
    ids=["error-event", "connection-reset", "malformed-sse"],
)
def test_stream_failure_after_start_ends_with_an_error_event(
    client: openai.OpenAI, mock: MockUpstream, unique: str, reply: Reply
) -> None:
    mock.script(unique, reply)
    stream = client.chat.completions.create(model=f"alt/{unique}", messages=USER, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert info.value.message
    assert all(c.object == "chat.completion.chunk" for c in received)


def test_stream_is_relayed_before_the_upstream_finishes(
    client: openai.OpenAI, mock: MockUpstream, unique: str
) -> None:
    mock.script(unique, Reply.slow_stream(6, 0.25))
    stream = client.chat.completions.create(model=f"alt/{unique}", messages=USER, stream=True)
    first = next(iter(stream))
    recorded = mock.requests_for(unique)[0]
    assert first.object == "chat.completion.chunk"
    assert not recorded.completed  # the upstream is still streaming when the client has a chunk
    rest = list(stream)
    assert rest and mock.wait_for(lambda r: r is recorded and r.completed)


def test_client_disconnect_cancels_the_upstream_stream(
    gateway: Gateway, tenant: Tenant, mock: MockUpstream, unique: str
) -> None:
    mock.script(unique, Reply.slow_stream(200, 0.05))
    with gateway.client(tenant.key) as client:
        stream = client.chat.completions.create(model=f"alt/{unique}", messages=USER, stream=True)
        iterator = iter(stream)
        next(iterator)
        next(iterator)
        stream.close()
    recorded = mock.wait_for(lambda r: unique in r.path + r.body.decode() and r.disconnected)
    assert not recorded.completed
