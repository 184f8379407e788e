"""The MCP server at /mcp, driven by the official ``mcp`` client over Streamable HTTP.

A live gateway, real Postgres, Redis and worker: the tools must find what they add, forget for
good, never cross workspaces, refuse bad keys at the HTTP layer and bad arguments as tool errors.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx2 as httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Gateway, Services, Tenant, make_tenant
from tests.gateway.services.test_auth import admin
from tests.gateway.surfaces.test_memory_api import add, api

pytestmark = pytest.mark.usefixtures("worker")
T = TypeVar("T")


def session_run(gateway: Gateway, key: str, work: Callable[[ClientSession], Awaitable[T]]) -> T:
    async def main() -> T:
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=60) as http,
            streamable_http_client(gateway.url + "/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(main())


async def call(session: ClientSession, tool: str, **arguments: Any) -> tuple[bool, Any]:
    result = await session.call_tool(tool, arguments)
    text = "".join(getattr(c, "text", "") for c in result.content)
    if result.is_error:
        return True, text
    return False, result.structured_content or json.loads(text)


def wait_searchable(gateway: Gateway, tenant: Tenant, item_id: str) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        for _ in range(300):
            got = api(http, tenant, "GET", f"/v1/memory/items/{item_id}").json()
            if got.get("embedded"):
                return
            asyncio.run(asyncio.sleep(0.1))
    raise AssertionError("the item added through MCP was not embedded in 30 s")


def test_tools_are_listed_with_their_schemas(gateway: Gateway, tenant: Tenant) -> None:
    async def work(session: ClientSession) -> dict[str, Any]:
        return {t.name: t.input_schema for t in (await session.list_tools()).tools}

    tools = session_run(gateway, tenant.key, work)
    assert set(tools) == {"search_memory", "add_memory", "list_threads", "get_thread", "forget"}
    assert tools["search_memory"]["required"] == ["query"]
    assert tools["search_memory"]["properties"]["k"]["maximum"] == 50


def test_add_then_search_then_forget(gateway: Gateway, tenant: Tenant) -> None:
    word = f"zephyr{uuid.uuid4().hex[:6]}"
    thread = f"mcp-{uuid.uuid4().hex[:8]}"

    async def adding(session: ClientSession) -> Any:
        return await call(
            session, "add_memory", content=f"Ana keeps her {word} bicycle in the garage",
            user="ana", thread_id=thread, metadata={"source": "mcp-test"},
        )  # fmt: skip

    failed, added = session_run(gateway, tenant.key, adding)
    assert not failed, added
    wait_searchable(gateway, tenant, added["id"])

    async def searching(session: ClientSession) -> Any:
        found = await call(session, "search_memory", query=f"{word} bicycle", k=5)
        scoped = await call(session, "search_memory", query=f"{word} bicycle", user="bob")
        threads = await call(session, "list_threads", user="ana")
        one = await call(session, "get_thread", thread_id=thread)
        return found, scoped, threads, one

    (f1, found), (f2, scoped), (f3, threads), (f4, one) = session_run(
        gateway, tenant.key, searching
    )
    assert not (f1 or f2 or f3 or f4)
    assert found["hits"][0]["id"] == added["id"] and word in found["hits"][0]["content"]
    assert found["hits"][0]["user"] == "ana" and found["hits"][0]["thread_id"] == thread
    assert scoped["hits"] == []  # another end user's memory stays out
    assert [t["id"] for t in threads["threads"]] == [thread]
    assert [n["id"] for n in one["notes"]] == [added["id"]]

    async def forgetting(session: ClientSession) -> Any:
        gone = await call(session, "forget", item_id=added["id"])
        after = await call(session, "search_memory", query=f"{word} bicycle")
        again = await call(session, "forget", item_id=added["id"])
        return gone, after, again

    (f5, gone), (f6, after), (f7, again) = session_run(gateway, tenant.key, forgetting)
    assert not f5 and gone["items"] == 1
    assert not f6 and all(h["id"] != added["id"] for h in after["hits"])
    assert f7 and "no memory item" in again


def test_forget_a_thread_and_a_user(gateway: Gateway, tenant: Tenant) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        add(http, tenant, {"content": "one", "thread_id": "t-a", "user": "u1"},
            {"content": "two", "thread_id": "t-a", "user": "u1"},
            {"content": "three", "thread_id": "t-b", "user": "u2"})  # fmt: skip

    async def work(session: ClientSession) -> Any:
        thread = await call(session, "forget", thread_id="t-a")
        user = await call(session, "forget", user="u2")
        left = await call(session, "list_threads")
        return thread, user, left

    (_, thread), (_, user), (_, left) = session_run(gateway, tenant.key, work)
    assert thread["items"] == 2 and user["items"] == 1
    assert left["threads"] == []


def test_another_workspace_never_sees_or_forgets_the_item(
    gateway: Gateway, services: Services, tenant: Tenant
) -> None:
    word = f"quartz{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        [item] = add(http, tenant, {"content": f"the {word} vault code", "thread_id": "secret"})
    other = make_tenant(services)

    async def work(session: ClientSession) -> Any:
        found = await call(session, "search_memory", query=f"{word} vault code")
        thread = await call(session, "get_thread", thread_id="secret")
        forgot = await call(session, "forget", item_id=item)
        return found, thread, forgot

    (f1, found), (f2, thread), (f3, forgot) = session_run(gateway, other.key, work)
    assert not f1 and found["hits"] == []
    assert f2 and "no thread" in thread
    assert f3 and "no memory item" in forgot
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        assert api(http, tenant, "GET", f"/v1/memory/items/{item}").status_code == 200


@pytest.mark.parametrize("key", ["", "cmg_not_a_key", "revoked"])
def test_bad_keys_get_401_before_any_mcp_message(
    gateway: Gateway, http: httpx.Client, services: Services, key: str
) -> None:
    if key == "revoked":
        victim = make_tenant(services)
        assert admin(http, "POST", f"/admin/keys/{victim.key_id}/revoke").status_code == 200
        key = victim.key
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    response = http.post("/mcp", json=hello, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "jsonrpc" not in response.text


def test_malformed_arguments_are_tool_errors_not_crashes(gateway: Gateway, tenant: Tenant) -> None:
    async def work(session: ClientSession) -> list[tuple[bool, Any]]:
        return [
            await call(session, "search_memory", query=""),
            await call(session, "search_memory", query="x", k=500),
            await call(session, "search_memory", query="x", k="many"),
            await call(session, "search_memory"),
            await call(session, "add_memory", content="x", thread_id="bad id with spaces"),
            await call(session, "add_memory", content="x", metadata={"a": "\x00"}),
            await call(session, "forget"),
            await call(session, "forget", item_id="a", user="b"),
            await call(session, "get_thread", thread_id="nope"),
            await call(session, "no_such_tool"),
        ]

    results = session_run(gateway, tenant.key, work)
    assert all(failed for failed, _ in results), results
    assert all(isinstance(text, str) and text for _, text in results)
    # And the server still answers afterwards.
    listed = session_run(gateway, tenant.key, lambda s: call(s, "list_threads"))
    assert listed[0] is False


def test_large_results_are_capped(gateway: Gateway, tenant: Tenant) -> None:
    word = f"walrus{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        add(http, tenant, {"content": f"{word} " + "long story " * 1000})

    async def work(session: ClientSession) -> Any:
        return await call(session, "search_memory", query=word, k=50)

    failed, found = session_run(gateway, tenant.key, work)
    assert not failed
    content = found["hits"][0]["content"]
    assert content.endswith("…[truncated]") and len(content) <= 4000 + 20


def test_tool_calls_are_rate_limited_and_counted(
    gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    assert (
        admin(http, "PATCH", f"/admin/keys/{tenant.key_id}", json={"rpm_limit": 2}).status_code
        == 200
    )

    async def work(session: ClientSession) -> list[tuple[bool, Any]]:
        return [await call(session, "list_threads") for _ in range(3)]

    results = session_run(gateway, tenant.key, work)
    assert [failed for failed, _ in results] == [False, False, True]
    assert "rate_limit" in results[2][1]
    metrics = http.get("/metrics").text
    assert 'route="mcp"' in metrics


def test_cmg_mcp_prints_a_config_that_a_client_can_use(gateway: Gateway, tenant: Tenant) -> None:
    from tests.gateway.ops.test_cli import cmg

    printed = cmg(gateway, "mcp", "--key", tenant.key, "--url", gateway.url + "/mcp")
    assert printed.returncode == 0, printed.stderr
    server = json.loads(printed.stdout)["mcpServers"]["context-memory"]
    assert "mcp-remote" in printed.stderr  # the Claude Desktop variant

    async def main() -> list[str]:
        async with (
            httpx.AsyncClient(headers=server["headers"], timeout=60) as http,
            streamable_http_client(server["url"], http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return [t.name for t in (await session.list_tools()).tools]

    assert "search_memory" in asyncio.run(main())
    missing = cmg(gateway, "mcp")  # no key given and no dev key in the test's data dir
    assert missing.returncode != 0 and "no key" in missing.stderr
