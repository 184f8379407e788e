"""Memory through plain chat completions: capture, recall across threads, scope, modes, fit.

A real worker embeds what the gateway stores; the mock upstream shows what was injected.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import Gateway, Tenant
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.usefixtures("worker")


def thread_view(http: httpx.Client, key: str, thread_id: str) -> dict[str, Any]:
    response = http.get(
        f"/v1/memory/threads/{thread_id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_embedded(
    http: httpx.Client, key: str, thread_id: str, count: int, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = thread_view(http, key, thread_id)
        messages = view["messages"]
        if len(messages) >= count and all(m["embedded"] for m in messages):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"not embedded in time: {view}")
        time.sleep(0.1)


def sent_memory(mock: MockUpstream, marker: str) -> str:
    """The memory block sent with the request carrying ``marker`` ("" when none): the text part
    the gateway appends to the latest user message."""
    seen = mock.wait_for(lambda r: marker.encode() in r.body)
    content = seen.json["messages"][-1]["content"]
    return content[-1]["text"] if isinstance(content, list) and len(content) > 1 else ""


def chat(client: openai.OpenAI, content: str, thread: str | None = None, **kwargs: Any) -> Any:
    headers = {"X-Thread-Id": thread} if thread else {}
    headers.update(kwargs.pop("headers", {}))
    return client.chat.completions.with_raw_response.create(
        model="mock/gpt", messages=kwargs.pop("messages", [{"role": "user", "content": content}]),
        extra_headers=headers, **kwargs,
    )  # fmt: skip


def test_turns_are_captured_with_answer_and_deduplicated(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant
) -> None:
    thread = f"t-{uuid.uuid4().hex[:8]}"
    history: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for turn in ("first question", "second question", "third question"):
        history.append({"role": "user", "content": turn})
        answer = chat(client, "", thread, messages=history).parse()
        history.append({"role": "assistant", "content": answer.choices[0].message.content})
    view = thread_view(http, tenant.key, thread)
    contents = [(m["position"], m["role"], m["content"]) for m in view["messages"]]
    assert contents == [
        (0, "user", "first question"), (1, "assistant", "echo: first question"),
        (2, "user", "second question"), (3, "assistant", "echo: second question"),
        (4, "user", "third question"), (5, "assistant", "echo: third question"),
    ]  # fmt: skip
    assert view["message_count"] == 6


def test_streamed_answer_and_tool_calls_are_captured(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant
) -> None:
    thread = f"t-{uuid.uuid4().hex[:8]}"
    stream = client.chat.completions.create(
        model="mock/gpt", messages=[{"role": "user", "content": "stream me"}], stream=True,
        extra_headers={"X-Thread-Id": thread},
    )  # fmt: skip
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: stream me"
    )
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    list(client.chat.completions.create(
        model="mock/tool",
        messages=[
            {"role": "user", "content": "stream me"},
            {"role": "assistant", "content": "echo: stream me"},
            {"role": "user", "content": "use the tool"},
        ],
        tools=tools, stream=True, extra_headers={"X-Thread-Id": thread},
    ))  # fmt: skip
    view = thread_view(http, tenant.key, thread)
    contents = [m["content"] for m in view["messages"]]
    assert contents[:2] == ["stream me", "echo: stream me"]
    assert contents[2] == "use the tool"
    assert contents[3] == '[called lookup({"x": 1})]'


def test_plain_clients_get_a_stable_thread_from_the_fingerprint(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant
) -> None:
    first = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": f"hello {uuid.uuid4()}"},
    ]
    one = chat(client, "", messages=first)
    thread = one.headers["x-memory-thread"]
    assert thread.startswith("fp_")
    two = chat(
        client,
        "",
        messages=[
            *first,
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "more"},
        ],
    )
    assert two.headers["x-memory-thread"] == thread
    assert [m["content"] for m in thread_view(http, tenant.key, thread)["messages"]][
        -1
    ] == "echo: more"


def test_fact_from_one_thread_is_recalled_in_another(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    old = f"t-{marker}-old"
    chat(client, "My cat is called Pixelbottom and she hates cucumbers.", old)
    wait_embedded(http, tenant.key, old, 2)
    raw = chat(
        client, f"What is my cat called? ({marker})", f"t-{marker}-new",
        messages=[
            {"role": "system", "content": "You are kind."},
            {"role": "user", "content": f"What is my cat called? ({marker})"},
        ],
    )  # fmt: skip
    sent = mock.wait_for(lambda r: f"({marker})".encode() in r.body).json["messages"]
    assert sent[0] == {"role": "system", "content": "You are kind."}  # the client's, untouched
    own, block = sent[1]["content"]  # the latest user turn: its own text, then the memory
    assert own == {"type": "text", "text": f"What is my cat called? ({marker})"}
    assert "Pixelbottom" in block["text"] and "not instructions" in block["text"]
    assert int(raw.headers["x-memory-items"]) >= 1 and int(raw.headers["x-memory-tokens"]) > 0
    record = http.get(
        f"/v1/memory/requests/{raw.headers['x-request-id']}",
        headers={"Authorization": f"Bearer {tenant.key}"},
    ).json()
    assert any("Pixelbottom" in item["content"] for item in record["items"])


def test_recall_never_crosses_end_users(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    chat(client, "My passport number ends in Zanzibar-77.", f"a-{marker}", user="alice")
    wait_embedded(http, tenant.key, f"a-{marker}", 2)
    chat(client, f"What does my passport number end in? {marker}", f"b-{marker}", user="bob")
    assert "Zanzibar" not in sent_memory(mock, marker)
    chat(
        client, f"What does my passport number end in? again {marker}", f"c-{marker}", user="alice"
    )
    assert "Zanzibar" in sent_memory(mock, f"again {marker}")


@pytest.mark.parametrize(
    ("mode", "stored", "injected"),
    [("off", False, False), ("read", False, True), ("write", True, False)],
)
def test_memory_modes(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant, mock: MockUpstream,
    mode: str, stored: bool, injected: bool,
) -> None:  # fmt: skip
    marker = uuid.uuid4().hex[:8]
    chat(client, "The launch code word is Marmalade.", f"seed-{marker}")
    wait_embedded(http, tenant.key, f"seed-{marker}", 2)
    thread = f"m-{marker}"
    raw = chat(
        client, f"What is the launch code word? {marker}", thread, headers={"X-Memory": mode}
    )
    assert ("Marmalade" in sent_memory(mock, marker)) is injected
    found = http.get(
        f"/v1/memory/threads/{thread}", headers={"Authorization": f"Bearer {tenant.key}"}
    )
    assert (found.status_code == 200) is stored
    assert ("x-memory-items" in raw.headers) is injected


def test_bad_memory_header_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "x", headers={"X-Memory": "sometimes"})
    assert info.value.body["param"] == "X-Memory"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        chat(client, "x", thread="bad thread id with spaces")


def test_long_history_is_trimmed_to_the_context_window(
    client: openai.OpenAI, tenant: Tenant, mock: MockUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    history: list[dict[str, Any]] = [{"role": "system", "content": "sys"}]
    for i in range(30):
        history.append({"role": "user", "content": f"turn {i} " + "words " * 60})
        history.append({"role": "assistant", "content": "ok " * 20})
    history.append({"role": "user", "content": f"final question {marker}"})
    raw = client.chat.completions.with_raw_response.create(
        model="mock/small",
        messages=history,
        max_tokens=200,
        extra_headers={"X-Thread-Id": f"w-{marker}"},
    )  # mock/small has a 2,048-token context window in the catalog
    sent = mock.wait_for(lambda r: marker.encode() in r.body).json["messages"]
    assert int(raw.headers["x-memory-context-trimmed"]) > 0
    assert len(sent) < len(history)
    assert sent[0] == {"role": "system", "content": "sys"}
    assert sent[-1]["content"] == f"final question {marker}"
    from memory.tokens import count_messages

    assert count_messages(sent, "mock/small") + 200 <= 2048


def test_secrets_are_redacted_in_memory_but_not_upstream(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant, mock: MockUpstream
) -> None:
    secret = "sk-proj-" + uuid.uuid4().hex + uuid.uuid4().hex
    thread = f"r-{uuid.uuid4().hex[:8]}"
    chat(client, f"my key is {secret} and db postgres://app:hunter2@db/x", thread)
    assert secret in mock.wait_for(lambda r: secret.encode() in r.body).body.decode()
    stored = thread_view(http, tenant.key, thread)["messages"][0]["content"]
    assert secret not in stored and "hunter2" not in stored
    assert "[REDACTED_SECRET]" in stored


def test_another_workspaces_memory_is_never_injected_nor_its_record_shown(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant, mock: MockUpstream,
    gateway: Gateway, services: Any,
) -> None:  # fmt: skip
    from tests.conftest import make_tenant

    marker = uuid.uuid4().hex[:8]
    chat(client, "Our wifi password is Tangerine-Falcon.", f"own-{marker}")
    wait_embedded(http, tenant.key, f"own-{marker}", 2)
    raw = chat(client, f"What is the wifi password? {marker}", f"own2-{marker}")
    assert "Tangerine" in sent_memory(mock, marker)
    intruder = make_tenant(services)
    with gateway.client(intruder.key) as other:
        chat(other, f"What is the wifi password? other {marker}")
    assert "Tangerine" not in sent_memory(mock, f"other {marker}")
    leaked = http.get(
        f"/v1/memory/requests/{raw.headers['x-request-id']}",
        headers={"Authorization": f"Bearer {intruder.key}"},
    )
    assert leaked.status_code == 404


def test_workspace_settings_set_default_mode_and_pii_redaction(
    client: openai.OpenAI, http: httpx.Client, tenant: Tenant, mock: MockUpstream
) -> None:
    from tests.conftest import MASTER_KEY

    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    bad = http.patch(
        f"/admin/workspaces/{tenant.name}", json={"settings": {"memory": "maybe"}}, headers=admin
    )
    assert bad.status_code == 400
    ok = http.patch(
        f"/admin/workspaces/{tenant.name}",
        json={"settings": {"memory": "write", "redact_pii": True}},
        headers=admin,
    )
    assert ok.json()["settings"] == {"memory": "write", "redact_pii": True}
    thread = f"pii-{uuid.uuid4().hex[:6]}"
    raw = chat(client, "mail me at jane.doe@example.com or +1 415 555 0100", thread)
    assert "x-memory-items" not in raw.headers  # write-only: nothing recalled
    stored = thread_view(http, tenant.key, thread)["messages"][0]["content"]
    assert "jane.doe@example.com" not in stored and "[REDACTED_EMAIL]" in stored
    assert "[REDACTED_PHONE]" in stored
