"""Memory that keeps the provider's prompt cache warm: placement, prefix, window fit, breakpoints.

Everything is checked on the bodies the real mock upstream received through a real gateway.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from core.providers import config
from core.settings import Settings
from tests.conftest import Gateway, Services, Tenant, gateway_env, make_tenant
from tests.memory.test_chat_memory import chat, thread_view, wait_embedded
from tests.mock_upstream import MockUpstream, Recorded

pytestmark = pytest.mark.usefixtures("worker")
MARK = {"type": "ephemeral"}
SYSTEM = "You are a careful assistant. " * 40


@pytest.fixture(scope="module")
def cc_gateway(
    services: Services,
    mock: MockUpstream,
    gateway: Gateway,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """A gateway whose ``cc/`` route marks breakpoints and whose ``sys/`` route places memory
    as a system message (the session gateway has synced the catalog; ``gateway`` ensures it)."""
    conf = tmp_path_factory.mktemp("cc") / "providers.toml"
    conf.write_text(
        f"""
[[provider]]
name = "cc"
base_url = "{mock.base_url}"
prefix = "cc/"
catalog = false
cache_control = true

[[provider]]
name = "sys"
base_url = "{mock.base_url}"
prefix = "sys/"
catalog = false
memory_placement = "system"
cache_control = true
"""
    )
    gw = Gateway(gateway_env(services, mock, conf), tmp_path_factory.mktemp("logs") / "cc.log")
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def seeded(gateway: Gateway, http: httpx.Client, services: Services) -> Tenant:
    """A fresh workspace that remembers a fact about the Zephyr project."""
    tenant = make_tenant(services)
    with gateway.client(tenant.key) as client:
        thread = f"seed-{uuid.uuid4().hex[:8]}"
        chat(client, "The Zephyr project deploys every Tuesday from the blue pipeline.", thread)
    wait_embedded(http, tenant.key, thread, 2)
    return tenant


def ask(
    client: Any, messages: list[dict[str, Any]], thread: str, model: str = "mock/gpt", **kw: Any
) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=messages, extra_headers={"X-Thread-Id": thread}, **kw
    )


def received(mock: MockUpstream, marker: str) -> Recorded:
    return mock.wait_for(lambda r: marker.encode() in r.body and r.path.endswith("/completions"))


def provenance(http: httpx.Client, key: str, request_id: str) -> dict[str, Any]:
    found = http.get(
        f"/v1/memory/requests/{request_id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert found.status_code == 200, found.text
    return found.json()  # type: ignore[no-any-return]


def history(marker: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": f"When does the Zephyr project deploy? {marker}"},
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_memory_goes_with_the_latest_user_turn_and_the_prefix_is_untouched(
    gateway: Gateway, http: httpx.Client, mock: MockUpstream, seeded: Tenant, stream: bool
) -> None:
    marker = uuid.uuid4().hex[:8]
    sent = history(marker)
    thread = f"p-{uuid.uuid4().hex[:8]}"
    with gateway.client(seeded.key) as client:
        raw = ask(client, sent, thread, stream=stream)
        if stream:
            for _ in raw.parse():
                pass
    forwarded = received(mock, marker).json["messages"]
    assert forwarded[:3] == sent[:3]  # system prompt and earlier history: as the client sent them
    own, block = forwarded[3]["content"]
    assert own == {"type": "text", "text": sent[3]["content"]}
    assert "Tuesday" in block["text"] and block["type"] == "text"
    record = provenance(http, seeded.key, raw.headers["x-request-id"])
    assert record["detail"]["placement"] == {"form": "user", "index": 3, "breakpoint": None}
    stored = [m["content"] for m in thread_view(http, seeded.key, thread)["messages"]]
    assert stored[-2] == sent[3]["content"]  # the client's own words are stored, not the block


def test_a_long_conversation_keeps_its_prefix_byte_identical(
    gateway: Gateway, mock: MockUpstream, seeded: Tenant
) -> None:
    marker = uuid.uuid4().hex[:8]
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    bodies: list[list[dict[str, Any]]] = []
    thread = f"long-{uuid.uuid4().hex[:8]}"  # not the marker: blocks name their items' threads
    with gateway.client(seeded.key) as client:
        for turn in range(8):
            messages.append(
                {"role": "user", "content": f"Zephyr project question {turn}: deploy day? {marker}"}
            )
            answer = ask(client, messages, thread).parse()
            bodies.append(received(mock, f"question {turn}: deploy day? {marker}").json["messages"])
            messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    injected = sum(isinstance(b[-1]["content"], list) for b in bodies)
    assert injected >= 6
    for before, after in itertools.pairwise(bodies):
        stable = len(before) - 1  # everything up to the latest user turn of the earlier request
        assert orjson.dumps(after[:stable]) == orjson.dumps(before[:stable])
        assert after[stable] == messages[stable]  # that turn now as the client resends it


def test_the_window_fit_drops_old_turns_in_blocks(
    gateway: Gateway, mock: MockUpstream, tenant: Tenant
) -> None:
    marker = uuid.uuid4().hex[:8]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "sys"}]
    cuts: list[str] = []
    with gateway.client(tenant.key) as client:
        for turn in range(24):
            messages.append({"role": "user", "content": f"turn {turn} {marker} " + "words " * 60})
            raw = client.chat.completions.with_raw_response.create(
                model="mock/small", messages=messages, max_tokens=200
            )  # 2,048-token window: turns give way from the 4th turn or so
            sent = received(mock, f"turn {turn} {marker} ").json["messages"]
            if "x-memory-context-trimmed" in raw.headers:
                assert sent[0] == {"role": "system", "content": "sys"}
                cuts.append(sent[1]["content"][:12])
            messages.append({"role": "assistant", "content": "ok " * 20})
    assert len(cuts) >= 8
    # A cut that moved with every turn would give len(cuts) distinct starts.
    assert len(set(cuts)) <= len(cuts) // 3
    assert cuts == sorted(cuts, key=lambda c: int(c.split()[1]))  # only ever moves forward


def test_breakpoint_marks_the_end_of_the_stable_prefix(
    cc_gateway: Gateway, http: httpx.Client, mock: MockUpstream, seeded: Tenant
) -> None:
    marker = uuid.uuid4().hex[:8]
    sent = history(marker)
    with cc_gateway.client(seeded.key) as client:
        raw = ask(client, sent, f"cc-{uuid.uuid4().hex[:8]}", "cc/model")
    forwarded = received(mock, marker).json["messages"]
    assert forwarded[:3] == sent[:3]
    own, block = forwarded[3]["content"]
    assert own == {"type": "text", "text": sent[3]["content"], "cache_control": MARK}
    assert "cache_control" not in block and "Tuesday" in block["text"]
    record = provenance(http, seeded.key, raw.headers["x-request-id"])
    assert record["detail"]["placement"] == {"form": "user", "index": 3, "breakpoint": 3}


def test_system_form_puts_memory_right_before_the_latest_user_turn(
    cc_gateway: Gateway, http: httpx.Client, mock: MockUpstream, seeded: Tenant
) -> None:
    marker = uuid.uuid4().hex[:8]
    sent = history(marker)
    with cc_gateway.client(seeded.key) as client:
        raw = ask(client, sent, f"sys-{uuid.uuid4().hex[:8]}", "sys/model")
    forwarded = received(mock, marker).json["messages"]
    assert forwarded[:2] == sent[:2] and forwarded[4] == sent[3]
    assert forwarded[2] == {
        "role": "assistant",
        "content": [{"type": "text", "text": sent[2]["content"], "cache_control": MARK}],
    }
    assert forwarded[3]["role"] == "system" and "Tuesday" in forwarded[3]["content"]
    record = provenance(http, seeded.key, raw.headers["x-request-id"])
    assert record["detail"]["placement"] == {"form": "system", "index": 3, "breakpoint": 2}


def test_the_thread_summary_goes_in_the_tail_block_too(
    gateway: Gateway, http: httpx.Client, mock: MockUpstream, tenant: Tenant
) -> None:
    marker = uuid.uuid4().hex[:8]
    thread = f"sum-{uuid.uuid4().hex[:8]}"  # not the marker: blocks name their items' threads
    messages: list[dict[str, Any]] = [{"role": "system", "content": "sys"}]
    with gateway.client(tenant.key) as client:
        for turn in range(5):  # > 2,000 tokens: the worker writes the thread's summary
            messages.append({"role": "user", "content": f"Kestrel fact {turn}: " + "data " * 450})
            answer = ask(client, messages, thread).parse()
            messages.append({"role": "assistant", "content": answer.choices[0].message.content})
        wait_embedded(http, tenant.key, thread, 10)
        deadline = time.monotonic() + 60
        while not (thread_view(http, tenant.key, thread)["summary"] or {}).get("embedded"):
            assert time.monotonic() < deadline, "no summary written"
            time.sleep(0.2)
        latest = {"role": "user", "content": f"What were the Kestrel facts? {marker}"}
        raw = ask(client, [messages[0], latest], thread)  # the early history left out
    forwarded = received(mock, marker).json["messages"]
    assert forwarded[0] == messages[0]
    assert isinstance(forwarded[1]["content"], list) and len(forwarded[1]["content"]) == 2, (
        forwarded
    )
    own, block = forwarded[1]["content"]
    assert own["text"] == latest["content"]
    assert "[summary of this conversation so far]" in block["text"]
    record = provenance(http, tenant.key, raw.headers["x-request-id"])
    assert record["items"][0]["kind"] == "summary"  # the latest (the worker may refresh it)
    assert record["items"][0]["thread_id"] == thread
    assert record["detail"]["placement"] == {"form": "user", "index": 1, "breakpoint": None}


def _part(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": text, **extra}


@pytest.mark.parametrize("own_marks", [1, 4])
def test_a_clients_own_cache_control_survives(
    cc_gateway: Gateway, mock: MockUpstream, seeded: Tenant, own_marks: int
) -> None:
    marker = uuid.uuid4().hex[:8]
    client_mark = {"type": "ephemeral", "ttl": "1h"}
    sent: list[dict[str, Any]] = [
        {"role": "system", "content": [_part(SYSTEM, cache_control=client_mark)]}
    ]
    for i in range(own_marks - 1):
        sent.append({"role": "user", "content": [_part(f"q{i}", cache_control=client_mark)]})
        sent.append({"role": "assistant", "content": f"a{i}"})
    sent.append({"role": "user", "content": f"When does the Zephyr project deploy? {marker}"})
    with cc_gateway.client(seeded.key) as client:
        ask(client, sent, f"own-{uuid.uuid4().hex[:8]}", "cc/model")
    forwarded = received(mock, marker).json["messages"]
    assert forwarded[:-1] == sent[:-1]  # the client's markers: where they were, as they were
    own = forwarded[-1]["content"][0]
    marks = orjson.dumps(forwarded).count(b'"cache_control"')
    if own_marks == 4:
        assert own == _part(sent[-1]["content"]) and marks == 4  # Anthropic's limit: none added
    else:
        assert own == _part(sent[-1]["content"], cache_control=MARK) and marks == 2


@pytest.mark.parametrize(
    "latest",
    [
        [_part("q", cache_control="yes")],
        [_part("q", cache_control=None)],
        [None, 3, "bare", {"type": "text", "text": 7}],
        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        [_part("q", cache_control={"type": ["odd"]}), {"cache_control": 1}],
        [],
        {"type": "text", "text": "an object, not an array"},
        7,
    ],
)
def test_odd_content_and_cache_control_shapes_never_500(
    cc_gateway: Gateway, mock: MockUpstream, seeded: Tenant, latest: Any
) -> None:
    marker = uuid.uuid4().hex[:8]
    sent = [
        {"role": "system", "content": "sys", "cache_control": {"type": "ephemeral"}},
        {"role": "user", "content": f"Zephyr deploy day {marker}"},
        {"role": "assistant", "content": "Tuesday."},
        {"role": "user", "content": latest},
    ]
    response = httpx.post(
        f"{cc_gateway.url}/v1/chat/completions",
        json={"model": "cc/model", "messages": sent},
        headers={"Authorization": f"Bearer {seeded.key}"},
        timeout=30,
    )
    if response.status_code == 400:
        assert response.json()["error"]["param"] == "messages[3].content"
        return
    assert response.status_code == 200, response.text
    forwarded = received(mock, marker).json["messages"]
    assert forwarded[:3] == sent[:3]
    content = forwarded[3]["content"]
    assert content[: len(latest)] == latest  # the client's parts pass through untouched


def test_bad_placement_in_the_providers_file_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "providers.toml"
    for line, problem in [
        ('memory_placement = "middle"', "memory_placement"),
        ('cache_control = "yes"', "cache_control"),
    ]:
        conf.write_text(f'[[provider]]\nname = "x"\nbase_url = "http://h"\n{line}\n')
        with pytest.raises(config.ConfigError, match=problem):
            config.load(Settings(providers_file=str(conf)))
    with pytest.raises(config.ConfigError, match="CMG_MEMORY_PLACEMENT"):
        config.load(Settings(memory_placement="front"))


def test_settings_give_the_default_and_a_provider_may_override(tmp_path: Path) -> None:
    conf = tmp_path / "providers.toml"
    conf.write_text(
        '[[provider]]\nname = "a"\nbase_url = "http://h"\n'
        '[[provider]]\nname = "b"\nbase_url = "http://h"\nmemory_placement = "user"\n'
        "cache_control = false\n"
    )
    loaded = config.load(
        Settings(providers_file=str(conf), memory_placement="system", cache_control=True)
    )
    placements = {n: (p.memory_placement, p.cache_control) for n, p in loaded.providers.items()}
    assert placements == {
        "openrouter": ("system", True), "a": ("system", True), "b": ("user", False)
    }  # fmt: skip
    assert config.load(Settings()).providers["openrouter"].memory_placement == "user"
