"""Provider error bodies of every shape become one OpenAI-shaped error (a pure function)."""

from __future__ import annotations

import orjson
import pytest

from core.errors import normalise_upstream_error


def _error(status: int, raw: bytes) -> dict[str, object]:
    body = normalise_upstream_error(status, raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_an_openai_shaped_error_keeps_every_field() -> None:
    raw = orjson.dumps({"error": {"message": "bad temp", "type": "invalid_request_error",
                                  "param": "temperature", "code": "bad_value"}})  # fmt: skip
    assert _error(400, raw) == {"message": "bad temp", "type": "invalid_request_error",
                                "param": "temperature", "code": "bad_value"}  # fmt: skip


def test_odd_field_types_fall_back_to_what_the_status_says() -> None:
    raw = orjson.dumps({"error": {"message": "", "type": 7, "param": ["x"], "code": 429}})
    assert _error(429, raw) == {
        "message": "upstream provider returned HTTP 429",
        "type": "rate_limit_error",
        "param": None,
        "code": "429",
    }


@pytest.mark.parametrize(
    ("status", "raw", "message", "type_"),
    [
        (503, b'{"error": "overloaded"}', "overloaded", "upstream_error"),  # a bare string
        (502, b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>", "upstream_error"),
        (404, b"", "upstream provider returned HTTP 404", "invalid_request_error"),
        (500, b'{"detail": "boom"}', '{"detail": "boom"}', "upstream_error"),  # no error key
        (400, b"[1, 2]", "[1, 2]", "invalid_request_error"),
        (500, b"\xff\xfe not utf-8", "\ufffd\ufffd not utf-8", "upstream_error"),
    ],
)
def test_any_other_body_becomes_its_text_or_the_status(
    status: int, raw: bytes, message: str, type_: str
) -> None:
    error = _error(status, raw)
    assert (error["message"], error["type"], error["param"], error["code"]) == (
        message, type_, None, None,
    )  # fmt: skip


def test_a_huge_text_body_is_cut_to_500_characters() -> None:
    assert len(str(_error(500, b"x" * 100_000)["message"])) == 500
