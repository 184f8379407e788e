"""Prometheus metrics (prometheus-client). Names and units follow Prometheus conventions.

Labels are bounded: ``route`` is the route template, ``model`` the served model id of a
routed request when the catalog or the providers file knows it (any other id counts as
``other``; see ``chat.model_label``), ``provider`` a configured provider name.
With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` switches on multiprocess mode
(``cmg serve`` sets it up). Background state (queues, outbox) is sampled by the gateway every
few seconds and exported as gauges, so scrapes never wait on Redis or Postgres.
"""

from __future__ import annotations

import functools
import hmac
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from starlette.requests import Request
from starlette.responses import Response

from core.errors import Unauthorized

F = TypeVar("F", bound=Callable[..., Any])
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

REQUESTS = Counter(
    "cmg_requests_total", "Requests answered.", ["route", "status", "model", "provider"]
)
DURATION = Histogram(
    "cmg_request_duration_seconds", "Request duration, to the last byte.", ["route"],
    buckets=_LATENCY,
)  # fmt: skip
UPSTREAM = Histogram(
    "cmg_upstream_duration_seconds", "Upstream time, first request to last byte.", ["provider"],
    buckets=_LATENCY,
)  # fmt: skip
TTFT = Histogram(
    "cmg_time_to_first_token_seconds", "Streams: time to the first relayed chunk.", ["provider"],
    buckets=_LATENCY,
)  # fmt: skip
OVERHEAD = Histogram(
    "cmg_gateway_overhead_seconds", "Request time not spent waiting on the provider.",
    buckets=_OVERHEAD,
)  # fmt: skip
UPSTREAM_ERRORS = Counter(
    "cmg_upstream_errors_total", "Upstream failures by kind.", ["provider", "kind"]
)
RETRIES = Counter("cmg_upstream_retries_total", "Upstream retries.", ["provider"])
FALLBACKS = Counter(
    "cmg_upstream_fallbacks_total", "Requests answered by a fallback route.", ["provider"]
)
TOKENS = Counter(
    "cmg_tokens_total",
    "Tokens by model and direction: prompt, completion; of the prompt, cached (read from the "
    "provider's cache) and memory (the injected memory block).",
    ["model", "direction"],
)
COST = Counter("cmg_cost_usd_total", "Cost in USD by model (catalog prices).", ["model"])
MEMORY_COST = Counter(
    "cmg_memory_cost_usd_total", "Of that cost, what the injected memory block cost.", ["model"]
)
RECALL = Histogram(
    "cmg_memory_recall_duration_seconds", "Memory recall, query embedding included.",
    buckets=_LATENCY,
)  # fmt: skip
INJECTED = Histogram(
    "cmg_memory_items_injected", "Memory items injected per request.",
    buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32),
)  # fmt: skip
RATELIMITED = Counter("cmg_ratelimit_rejections_total", "Requests refused by a limit.", ["limit"])
FAIL_OPEN = Counter(
    "cmg_ratelimit_fail_open_total", "Requests let through because the limiter was unreachable."
)
AUTH_FAILURES = Counter("cmg_auth_failures_total", "Requests refused at authentication.", ["code"])
REDACTIONS = Counter(
    "cmg_redactions_total", "Secrets (and PII) masked before storage, by kind.", ["kind"]
)
LOOP_LAG = Gauge(
    "cmg_event_loop_lag_seconds",
    "How late the event loop ran a timer lately (the worst of the last few seconds).",
    multiprocess_mode="max",
)
JOB_DURATION = Histogram(
    "cmg_job_duration_seconds", "Background job run time by job.", ["job"], buckets=_LATENCY
)
JOB_FAILURES = Counter("cmg_job_failures_total", "Background job failures by job.", ["job"])
QUEUE_DEPTH = Gauge(
    "cmg_rq_queue_depth", "Jobs waiting per RQ queue.", ["queue"], multiprocess_mode="max"
)
FAILED_JOBS = Gauge(
    "cmg_rq_failed_jobs",
    "Jobs in the failed registry per queue.",
    ["queue"],
    multiprocess_mode="max",
)
OUTBOX_BACKLOG = Gauge(
    "cmg_outbox_backlog", "Outbox rows not yet pushed to Redis.", multiprocess_mode="max"
)
OUTBOX_AGE = Gauge(
    "cmg_outbox_oldest_age_seconds",
    "Age of the oldest unpushed outbox row.",
    multiprocess_mode="max",
)

NOTICE_UP = Gauge(
    "cmg_notice_channel_up",
    "1 while this process listens for change notices; 0: caches live by their lifetimes.",
    multiprocess_mode="livemin",
)
NOTICE_RECONNECTS = Counter(
    "cmg_notice_reconnects_total", "Times the change-notice listener lost its session."
)
NOTICES = Counter("cmg_change_notices_total", "Change notices received, by table.", ["table"])


_CHILDREN: dict[tuple[Any, ...], Any] = {}
_MAX_CHILDREN = 20_000


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, cached: the hot path pays one dict lookup, not a lock and a
    validation per request. Bounded: the cache is dropped (not the series) when it fills."""
    key = (metric, *values)
    found = _CHILDREN.get(key)
    if found is None:
        if len(_CHILDREN) >= _MAX_CHILDREN:
            _CHILDREN.clear()
        found = _CHILDREN[key] = metric.labels(*values)
    return found


def timed_job(func: F) -> F:
    """Record a job's duration and failures (worker side)."""
    name = func.__name__

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        except Exception:
            JOB_FAILURES.labels(name).inc()
            raise
        finally:
            JOB_DURATION.labels(name).observe(time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


def serve_on_port(host: str, port: int) -> None:
    """Metrics on their own port (workers, or a gateway that keeps /metrics off its API port)."""
    if port:
        start_http_server(port, addr=host, registry=registry() or REGISTRY)


def registry() -> CollectorRegistry | None:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    return None


async def metrics(request: Request) -> Response:
    """The scrape; with ``CMG_METRICS_TOKEN`` set, only for ``Authorization: Bearer <token>``."""
    token = request.state.deps.settings.metrics_token
    if token and not _bearer_matches(request.headers.get("authorization", ""), token):
        raise Unauthorized(
            "/metrics needs 'Authorization: Bearer <CMG_METRICS_TOKEN>'",
            code="invalid_metrics_token",
        )
    return Response(generate_latest(registry() or REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
