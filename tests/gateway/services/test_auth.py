"""Keys: hashed at rest, shown once, revocable, expiring; the admin API behind the master key."""

from __future__ import annotations

import time
from typing import Any

import httpx2 as httpx
import openai
import pytest
from sqlalchemy import select

from memory.schema import ApiKey
from tests.conftest import MASTER_KEY, Gateway, Services, Tenant, make_tenant, run_db
from tests.gateway.surfaces.test_errors import assert_error_shape

USER = [{"role": "user", "content": "hi"}]


def admin(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return http.request(method, path, headers={"Authorization": f"Bearer {MASTER_KEY}"}, **kwargs)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic abc"}, "missing_api_key"),
        ({"Authorization": "Bearer cmg_not_a_real_key"}, "invalid_api_key"),
    ],
)
def test_missing_or_invalid_key_is_401(
    http: httpx.Client, headers: dict[str, str], code: str
) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "mock/gpt", "messages": USER}, headers=headers
    )
    assert assert_error_shape(response, 401)["code"] == code
    assert_error_shape(http.get("/v1/models", headers=headers), 401)


def test_sdk_sees_authentication_error(gateway: Gateway) -> None:
    with gateway.client("cmg_wrong") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="mock/gpt", messages=USER)


def test_keys_are_stored_only_as_sha256(services: Services, tenant: Tenant) -> None:
    async def work(session: Any) -> list[ApiKey]:
        return list(await session.scalars(select(ApiKey)))

    rows = run_db(services, work)
    assert all(tenant.key not in (r.key_hash, r.prefix, r.name) for r in rows)
    import hashlib

    assert hashlib.sha256(tenant.key.encode()).hexdigest() in {r.key_hash for r in rows}
    assert tenant.key.startswith("cmg_") and len(tenant.key) == 47


def test_revoked_key_gets_401(http: httpx.Client, client: openai.OpenAI, tenant: Tenant) -> None:
    client.chat.completions.create(model="mock/gpt", messages=USER)
    revoked = admin(http, "POST", f"/admin/keys/{tenant.key_id}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="mock/gpt", messages=USER)
    assert info.value.code == "revoked_api_key"  # type: ignore[attr-defined]


def test_key_revoked_elsewhere_stops_working_within_the_cache_ttl(
    gateway: Gateway, services: Services
) -> None:
    from gateway.services import workspaces

    tenant = make_tenant(services)
    with gateway.client(tenant.key) as client:
        client.chat.completions.create(model="mock/gpt", messages=USER)  # now cached
        run_db(services, lambda s: workspaces.revoke_key(s, tenant.key_id))
        time.sleep(1.2)  # CMG_AUTH_CACHE_SECONDS=1 in the test gateway
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="mock/gpt", messages=USER)


def test_expired_key_gets_401(gateway: Gateway, services: Services) -> None:
    tenant = make_tenant(services, expires_in_days=1 / 86400)  # one second
    time.sleep(1.1)
    with gateway.client(tenant.key) as client, pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="mock/gpt", messages=USER)
    assert info.value.code == "expired_api_key"  # type: ignore[attr-defined]


def test_admin_api_creates_workspace_and_key_that_works(
    http: httpx.Client, gateway: Gateway
) -> None:
    name = f"admin-{time.time_ns()}"
    assert admin(http, "POST", "/admin/workspaces", json={"name": name}).status_code == 201
    assert_error_shape(admin(http, "POST", "/admin/workspaces", json={"name": name}), 400)
    created = admin(http, "POST", "/admin/keys", json={"workspace": name, "name": "ci"})
    assert created.status_code == 201
    secret = created.json()["key"]
    listed = admin(http, "GET", "/admin/keys", params={"workspace": name}).json()["data"]
    assert [k["name"] for k in listed] == ["ci"] and "key" not in listed[0]
    assert secret not in httpx.Response(200, json=listed).text
    with gateway.client(secret) as client:
        assert client.chat.completions.create(model="mock/gpt", messages=USER).choices


def test_admin_api_rejects_workspace_keys_and_bad_input(http: httpx.Client, tenant: Tenant) -> None:
    response = http.get("/admin/keys", headers={"Authorization": f"Bearer {tenant.key}"})
    assert_error_shape(response, 401)
    assert_error_shape(http.get("/admin/keys"), 401)
    assert_error_shape(
        admin(http, "POST", "/admin/keys", json={"workspace": "nope-" + tenant.name}), 404
    )
    assert_error_shape(admin(http, "POST", "/admin/keys", json={"workspace": 3}), 400)
    assert_error_shape(
        admin(http, "POST", "/admin/keys", json={"workspace": tenant.name, "expires_in_days": "x"}),
        400,
    )
    assert_error_shape(admin(http, "POST", "/admin/keys/not-a-uuid/revoke"), 404)
