"""Errors the gateway answers with, and the one renderer of their OpenAI shape.

    GatewayError                      status  type
    ├── BadRequest                    400     invalid_request_error
    │   └── BodyTooLarge              413     invalid_request_error
    ├── Unauthorized                  401     invalid_request_error (code invalid_api_key)
    ├── Forbidden                     403     invalid_request_error
    ├── NotFound                      404     invalid_request_error
    ├── RateLimited                   429     rate_limit_error (Retry-After)
    │   └── QuotaExceeded             429     insufficient_quota
    ├── UpstreamError                 502     upstream_error (or the provider's own status)
    │   └── UpstreamTimeout           504     timeout
    └── ServiceUnavailable            503     service_unavailable

Every body is ``{"error": {"message", "type", "param", "code"}}`` with ``code`` a string or null.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> Response:
        return json_error(self.status, self.body(), self.headers)


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(BadRequest):
    status = 413


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"


class UpstreamError(GatewayError):
    """The provider failed or answered with an error; ``status`` may be the provider's own."""

    status = 502
    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"


def error_body(message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def json_error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return json_response(body, status, headers)


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer (orjson), for every handler of the gateway."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def normalise_upstream_error(status: int, raw: bytes) -> dict[str, Any]:
    """Any provider error body, made OpenAI-shaped; the provider's message is kept."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        code = err.get("code")
        return error_body(
            message if isinstance(message, str) and message else _default_message(status),
            err["type"] if isinstance(err.get("type"), str) else _type_for(status),
            err["param"] if isinstance(err.get("param"), str) else None,
            str(code) if code is not None else None,
        )
    if isinstance(err, str):
        return error_body(err, _type_for(status), None, None)
    text = raw.decode("utf-8", "replace").strip()[:500]
    return error_body(text or _default_message(status), _type_for(status), None, None)


def _type_for(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "upstream_error"
    return "invalid_request_error"


def _default_message(status: int) -> str:
    return f"upstream provider returned HTTP {status}"
