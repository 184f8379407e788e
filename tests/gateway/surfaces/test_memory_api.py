"""The memory API: add (and wait), search, get, list, delete; and workspace isolation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import Services, Tenant, make_tenant, run_db
from tests.gateway.surfaces.test_errors import assert_error_shape

pytestmark = pytest.mark.usefixtures("worker")


def api(
    http: httpx.Client, tenant: Tenant, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    return http.request(method, path, headers={"Authorization": f"Bearer {tenant.key}"}, **kwargs)


def add(http: httpx.Client, tenant: Tenant, *items: dict[str, Any]) -> list[str]:
    response = api(
        http, tenant, "POST", "/v1/memory/items?wait=true", json={"items": list(items)}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["searchable"] is True
    return [d["id"] for d in response.json()["data"]]


def search(http: httpx.Client, tenant: Tenant, q: str, **params: Any) -> list[dict[str, Any]]:
    response = api(http, tenant, "GET", "/v1/memory/search", params={"q": q, **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def test_added_items_are_searchable_with_score_kind_metadata_and_date(
    http: httpx.Client, tenant: Tenant
) -> None:
    ids = add(
        http, tenant,
        {"content": "Priya prefers window seats on long flights.", "metadata": {"source": "crm"},
         "created_at": "2024-03-05T10:00:00Z", "user": "priya"},
        {"content": "The quarterly board meeting moved to Thursday.", "kind": "fact"},
    )  # fmt: skip
    hits = search(http, tenant, "which seat does Priya like on a plane?")
    assert hits[0]["id"] == ids[0]
    assert hits[0]["score"] > 0 and hits[0]["kind"] == "note"
    assert hits[0]["metadata"] == {"source": "crm"} and hits[0]["user"] == "priya"
    assert hits[0]["created_at"] == 1709632800
    assert search(http, tenant, "board meeting day")[0]["kind"] == "fact"
    assert [h["id"] for h in search(http, tenant, "seat", user="someone-else")] == []


def test_vector_and_lexical_legs_can_be_asked_for_alone(http: httpx.Client, tenant: Tenant) -> None:
    add(http, tenant, {"content": "Our office dog Biscuit loves tennis balls."})
    lexical = search(http, tenant, "Biscuit", mode="lexical")
    vector = search(http, tenant, "a pet that likes to play fetch", mode="vector")
    assert lexical and lexical[0]["lexical_score"] > 0 and lexical[0]["similarity"] is None
    assert vector and vector[0]["similarity"] > 0.2 and "Biscuit" in vector[0]["content"]


def test_get_and_delete_item_and_it_never_comes_back(http: httpx.Client, tenant: Tenant) -> None:
    [item_id] = add(http, tenant, {"content": "The vault combination is 31-7-99 for Ferdinand."})
    got = api(http, tenant, "GET", f"/v1/memory/items/{item_id}").json()
    assert got["content"].startswith("The vault") and got["embedded"] is True
    assert search(http, tenant, "vault combination Ferdinand")
    assert api(http, tenant, "DELETE", f"/v1/memory/items/{item_id}").json()["deleted"] is True
    assert_error_shape(api(http, tenant, "GET", f"/v1/memory/items/{item_id}"), 404)
    assert search(http, tenant, "vault combination Ferdinand") == []  # the only item is gone


def test_delete_thread_and_end_user_remove_everything_including_stats(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    thread = f"th-{uuid.uuid4().hex[:6]}"
    add(
        http, tenant,
        {"content": "Zorblax stays in the thread.", "thread_id": thread, "role": "user"},
        {"content": "Quuxwidget belongs to the user.", "user": "u1"},
    )  # fmt: skip
    assert api(http, tenant, "GET", f"/v1/memory/threads/{thread}").status_code == 200
    assert api(http, tenant, "DELETE", f"/v1/memory/threads/{thread}").json()["items"] == 1
    assert_error_shape(api(http, tenant, "GET", f"/v1/memory/threads/{thread}"), 404)
    assert not any("Zorblax" in h["content"] for h in search(http, tenant, "Zorblax"))
    assert api(http, tenant, "DELETE", "/v1/memory/users/u1").json()["items"] == 1
    assert search(http, tenant, "Quuxwidget") == []  # nothing at all is left

    from sqlalchemy import text

    async def stats(session: Any) -> int:
        return int(
            await session.scalar(
                text("SELECT count(*) FROM term_stats t JOIN workspaces w ON w.id = t.workspace_id "
                     "WHERE w.name = :n AND lexeme IN ('zorblax', 'quuxwidget')"),
                {"n": tenant.name},
            )
        )  # fmt: skip

    assert run_db(services, stats) == 0


def test_threads_list_paginates_with_cursor(http: httpx.Client, tenant: Tenant) -> None:
    for i in range(5):
        add(http, tenant, {"content": f"note {i}", "thread_id": f"page-{i}", "role": "user"})
    first = api(http, tenant, "GET", "/v1/memory/threads", params={"limit": 2}).json()
    assert first["object"] == "list" and len(first["data"]) == 2 and first["has_more"] is True
    seen = [t["id"] for t in first["data"]]
    cursor = first["last_id"]
    while True:
        page = api(
            http, tenant, "GET", "/v1/memory/threads", params={"limit": 2, "after": cursor}
        ).json()
        seen += [t["id"] for t in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["last_id"]
    assert sorted(seen) == [f"page-{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"items": []}, "items"),
        ({"items": [{"content": ""}]}, "items[0].content"),
        ({"items": [{"content": "x", "kind": "summary"}]}, "items[0].kind"),
        ({"items": [{"content": "x", "metadata": [1]}]}, "items[0].metadata"),
        ({"items": [{"content": "x", "created_at": "yesterday"}]}, "items[0].created_at"),
        ({"items": ["just a string"]}, "items[0]"),
    ],
)
def test_bad_items_are_400(http: httpx.Client, tenant: Tenant, body: Any, param: str) -> None:
    error = assert_error_shape(api(http, tenant, "POST", "/v1/memory/items", json=body), 400)
    assert error["param"] == param


def test_search_needs_a_query(http: httpx.Client, tenant: Tenant) -> None:
    assert assert_error_shape(api(http, tenant, "GET", "/v1/memory/search"), 400)["param"] == "q"
    assert_error_shape(
        api(http, tenant, "GET", "/v1/memory/search", params={"q": "x", "k": "0"}), 400
    )
    assert_error_shape(
        api(http, tenant, "GET", "/v1/memory/search", params={"q": "x", "mode": "magic"}), 400
    )


def test_another_workspace_can_never_read_search_or_delete(
    http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    thread = f"secret-{uuid.uuid4().hex[:6]}"
    [item_id] = add(
        http,
        tenant,
        {"content": "Project Nightjar ships on May 3rd.", "thread_id": thread, "user": "ceo"},
    )
    intruder = make_tenant(services)
    assert search(http, intruder, "Project Nightjar ships") == []
    assert search(http, intruder, "Nightjar", mode="lexical") == []
    assert_error_shape(api(http, intruder, "GET", f"/v1/memory/items/{item_id}"), 404)
    assert_error_shape(api(http, intruder, "DELETE", f"/v1/memory/items/{item_id}"), 404)
    assert_error_shape(api(http, intruder, "GET", f"/v1/memory/threads/{thread}"), 404)
    assert_error_shape(api(http, intruder, "DELETE", f"/v1/memory/threads/{thread}"), 404)
    assert api(http, intruder, "DELETE", "/v1/memory/users/ceo").json()["items"] == 0
    assert api(http, intruder, "GET", "/v1/memory/threads").json()["data"] == []
    # still there for its owner
    assert api(http, tenant, "GET", f"/v1/memory/items/{item_id}").status_code == 200
    assert search(http, tenant, "Project Nightjar ships")[0]["id"] == item_id


def test_memory_api_needs_a_workspace_key(http: httpx.Client) -> None:
    assert_error_shape(http.get("/v1/memory/search", params={"q": "x"}), 401)
    assert_error_shape(http.post("/v1/memory/items", json={"items": [{"content": "x"}]}), 401)
    assert_error_shape(http.delete("/v1/memory/users/x"), 401)
