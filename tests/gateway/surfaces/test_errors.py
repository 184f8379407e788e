"""Bad input gets an OpenAI-shaped error with the right status, and never reaches upstream."""

from __future__ import annotations

import uuid

import httpx2 as httpx
import pytest

from tests.conftest import Tenant
from tests.mock_upstream import MockUpstream


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


def post(http: httpx.Client, key: str, content: bytes) -> httpx.Response:
    return http.post(
        "/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b'["a list"]', None, "invalid_json"),
        (b'"a string"', None, "invalid_json"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
            None,
            "invalid_json",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "missing_model"),
        (
            b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}',
            "model",
            "invalid_type",
        ),
        (
            b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}',
            "model",
            "invalid_type",
        ),
        (b'{"model": "mock/gpt"}', "messages", "missing_messages"),
        (b'{"model": "mock/gpt", "messages": "hi"}', "messages", "invalid_type"),
        (b'{"model": "mock/gpt", "messages": []}', "messages", "empty_array"),
        (b'{"model": "mock/gpt", "messages": [1]}', "messages[0]", "invalid_type"),
        (
            b'{"model": "mock/gpt", "messages": [{"role": "wizard"}]}',
            "messages[0].role",
            "invalid_value",
        ),
        (
            b'{"model": "mock/gpt", "messages": [{"role": "user", "content": 5}]}',
            "messages[0].content",
            "invalid_type",
        ),
        (
            b'{"model": "mock/gpt", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',  # noqa: E501
            "stream",
            "invalid_type",
        ),
    ],
)
def test_bad_chat_body_is_400_and_not_forwarded(
    http: httpx.Client,
    tenant: Tenant,
    mock: MockUpstream,
    body: bytes,
    param: str | None,
    code: str,
) -> None:
    before = len(mock.requests)
    error = assert_error_shape(post(http, tenant.key, body), 400)
    assert error["param"] == param and error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert len(mock.requests) == before


def test_body_over_the_limit_is_413(http: httpx.Client, tenant: Tenant, mock: MockUpstream) -> None:
    before = len(mock.requests)
    big = (
        b'{"model": "mock/gpt", "messages": [{"role": "user", "content": "'
        + b"a" * (9 << 20)
        + b'"}]}'
    )
    error = assert_error_shape(post(http, tenant.key, big), 413)
    assert error["code"] == "body_too_large"
    assert len(mock.requests) == before


def test_chunked_body_over_the_limit_is_413(http: httpx.Client, tenant: Tenant) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "mock/gpt", "messages": [{"role": "user", "content": "'
        for _ in range(9):
            yield b"a" * (1 << 20)
        yield b'"}]}'

    response = http.post(
        "/v1/chat/completions", content=chunks(), headers={"Authorization": f"Bearer {tenant.key}"}
    )
    assert_error_shape(response, 413)


def test_unknown_model_is_404_when_the_catalog_knows_the_provider(
    http: httpx.Client, tenant: Tenant, mock: MockUpstream
) -> None:
    before = len(mock.requests)
    body = b'{"model": "mock/does-not-exist", "messages": [{"role": "user", "content": "x"}]}'
    error = assert_error_shape(post(http, tenant.key, body), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert len(mock.requests) == before


def test_unknown_route_and_method_are_openai_shaped(http: httpx.Client) -> None:
    assert_error_shape(http.get("/v1/nothing-here"), 404)
    assert_error_shape(http.get("/v1/chat/completions"), 405)


def test_embeddings_without_input_is_400(http: httpx.Client, tenant: Tenant) -> None:
    response = http.post(
        "/v1/embeddings",
        json={"model": "alt/embed"},
        headers={"Authorization": f"Bearer {tenant.key}"},
    )
    assert assert_error_shape(response, 400)["param"] == "input"


def test_request_id_from_the_client_is_echoed_and_a_bad_one_replaced(http: httpx.Client) -> None:
    mine = f"req-{uuid.uuid4().hex}"
    assert http.get("/healthz", headers={"X-Request-Id": mine}).headers["x-request-id"] == mine
    replaced = http.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32
