"""Shared checks of the robustness suite: what every answer must look like, what the store holds.

Every test here drives the session gateway (a real ``cmg serve`` process) and, after each test,
checks that the process is still alive and answers ``/healthz``. Tests record how many inputs
they tried in ``TRIED``; the totals are printed at the end of the run (for the README).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from hypothesis import configuration
from sqlalchemy import text

from tests.conftest import Gateway, Services, run_db

TRIED: dict[str, tuple[int, str]] = {}  # name -> (inputs tried, statuses seen)

_COUNTS = text(
    """
    SELECT
      (SELECT count(*) FROM workspaces) AS workspaces,
      (SELECT count(*) FROM api_keys) AS api_keys,
      (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL) AS live_keys,
      (SELECT count(*) FROM memory_items m JOIN workspaces w ON w.id = m.workspace_id
        WHERE w.name = :ws) AS memory_items,
      (SELECT count(*) FROM threads t JOIN workspaces w ON w.id = t.workspace_id
        WHERE w.name = :ws) AS threads
    """
)


def record(name: str, tried: int, statuses: Counter[int] | None = None) -> None:
    """One summary line per fuzz run: ``fuzz: chat bodies tried=150 (400: 141, 200: 9)``."""
    seen = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())) if statuses else ""
    TRIED[name] = (tried, f" ({seen})" if seen else "")
    print(f"fuzz: {name} tried={tried}{TRIED[name][1]}")


def store_counts(services: Services, workspace: str = "") -> dict[str, int]:
    """Rows of workspaces and keys (all), and of memory items and threads of ``workspace``."""

    async def work(session: Any) -> dict[str, int]:
        row = (await session.execute(_COUNTS, {"ws": workspace})).mappings().one()
        return dict(row)

    return run_db(services, work)  # type: ignore[no-any-return]


def describe(response: httpx.Response) -> str:
    request = response.request
    status, text = response.status_code, response.text[:500]
    return f"{request.method} {str(request.url)[:300]} -> {status}: {text}"


def sse_data(raw: str) -> list[str]:
    return [line[5:].strip() for line in raw.splitlines() if line.startswith("data:")]


def assert_clean(response: httpx.Response, *, server_may_answer: bool = False) -> Any:
    """Never a 5xx; the body is JSON (or a well-formed SSE stream); 4xx is OpenAI-shaped.

    ``server_may_answer``: the HTTP server itself (uvicorn/httptools, before the app) may refuse
    the request with any 4xx; such answers carry no ``X-Request-Id`` and need not be JSON.
    """
    assert response.status_code < 500, describe(response)
    if server_may_answer and "x-request-id" not in response.headers:
        assert 400 <= response.status_code < 500, describe(response)
        return None
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        assert response.status_code == 200, describe(response)
        events = sse_data(response.text)
        assert events and events[-1] == "[DONE]", describe(response)
        for event in events[:-1]:
            assert "error" not in orjson.loads(event), (
                f"error event in the stream: {describe(response)}"
            )
        return events
    assert content_type.startswith("application/json"), describe(response)
    body = orjson.loads(response.content)
    if response.status_code >= 400:
        assert_error_body(body, describe(response))
    return body


def assert_error_body(body: Any, context: str = "") -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, context
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, context
    assert isinstance(error["message"], str) and error["message"], context
    assert isinstance(error["type"], str), context
    assert error["param"] is None or isinstance(error["param"], str), context
    assert error["code"] is None or isinstance(error["code"], str), context
    return error


@pytest.fixture
def statuses() -> Counter[int]:
    """Status codes of every answer ``raw`` got in this test."""
    return Counter()


@pytest.fixture
def raw(gateway: Gateway, statuses: Counter[int]) -> Iterator[httpx.Client]:
    """A client that never reuses a connection, so a 500 (after which uvicorn drops the
    connection) shows up as that 500 and not as a reset on the next request."""

    def count(response: httpx.Response) -> None:
        statuses[response.status_code] += 1

    with httpx.Client(
        base_url=gateway.url,
        timeout=30,
        headers={"Connection": "close"},
        event_hooks={"response": [count]},
    ) as client:
        yield client


@pytest.fixture(autouse=True, scope="session")
def hypothesis_home() -> Iterator[None]:
    """Hypothesis caches unicode tables and constants under ``./.hypothesis`` even without an
    example database; keep them in the system temp directory (reused by later runs), not in
    the working tree."""
    previous = getattr(configuration, "__hypothesis_home_directory", None)
    configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cmg-robustness-hypothesis")
    yield
    configuration.set_hypothesis_home_dir(previous)


@pytest.fixture(autouse=True)
def gateway_survives(gateway: Gateway) -> Iterator[None]:
    yield
    assert gateway.proc.poll() is None, "the gateway process died"
    response = httpx.get(gateway.url + "/healthz", timeout=5)
    assert response.status_code == 200, response.text


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TRIED:
        terminalreporter.section("robustness: inputs tried")
        for name, (tried, seen) in sorted(TRIED.items()):
            terminalreporter.line(f"fuzz: {name} tried={tried}{seen}")
        terminalreporter.line(f"fuzz: total tried={sum(t for t, _ in TRIED.values())}")
