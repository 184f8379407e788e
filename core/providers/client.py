"""The *forward* stage: a request to its route, with retries and fallbacks, over one pooled client.

aiohttp is the upstream client: measured here a Starlette forwarder reached ~460 req/s with
httpx's default transport, 1,100-1,800 with httpx-aiohttp and 1,900-3,500 with aiohttp itself,
so the hot path talks aiohttp directly.

Retries happen only before anything reached the client: a response is returned to the caller
once its status is < 400, and nothing after that point is retried. Connect errors, 429 and 5xx
are retried with exponential backoff and full jitter (``Retry-After`` honoured up to
``retry_max_delay``), then the next target of the route is tried. Other 4xx are relayed at once.
Lower-layer errors are translated here into ``UpstreamError`` / ``UpstreamTimeout``.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from core import metrics
from core.errors import UpstreamError, UpstreamTimeout, normalise_upstream_error
from core.providers.router import Target
from core.settings import Settings


class Payload(Protocol):
    def with_model(self, model: str) -> Payload: ...
    def payload(self) -> bytes: ...


@dataclass
class Upstream:
    """An upstream answer whose status and headers arrived; the body is still to read."""

    target: Target
    response: aiohttp.ClientResponse
    attempts: int
    started: float

    @property
    def content_type(self) -> str:
        return self.response.headers.get("Content-Type", "application/json")

    def close(self) -> None:
        self.response.close()


class ProviderClient:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, path: str, request: Payload, route: tuple[Target, ...]) -> Upstream:
        last: UpstreamError | None = None
        attempts = 0
        started = time.perf_counter()
        for position, target in enumerate(route):
            payload = request.with_model(target.model).payload()
            if position:
                metrics.child(metrics.FALLBACKS, target.provider.name).inc()
            for attempt in range(target.provider.retries + 1):
                attempts += 1
                if attempt:
                    metrics.child(metrics.RETRIES, target.provider.name).inc()
                try:
                    response = await self._post(target, path, payload)
                except TimeoutError:
                    metrics.UPSTREAM_ERRORS.labels(target.provider.name, "timeout").inc()
                    last = UpstreamTimeout(
                        f"provider {target.provider.name} did not answer in time",
                        code="upstream_timeout",
                    )
                    break  # a slow provider is not retried; the next target may be faster
                except aiohttp.ClientError as exc:
                    metrics.UPSTREAM_ERRORS.labels(target.provider.name, "connect").inc()
                    delay: float | None
                    last = UpstreamError(
                        f"could not reach provider {target.provider.name}: {type(exc).__name__}",
                        code="upstream_unreachable",
                    )
                    delay = self._backoff(attempt)
                else:
                    if response.status < 400:
                        return Upstream(target, response, attempts, started)
                    kind = "429" if response.status == 429 else f"{response.status // 100}xx"
                    metrics.UPSTREAM_ERRORS.labels(target.provider.name, kind).inc()
                    last, delay = await self._failure(target, response, attempt)
                    if last.status not in _RETRYABLE:
                        raise last
                if delay is None or attempt >= target.provider.retries:
                    break
                await asyncio.sleep(delay)
        assert last is not None
        raise last

    async def get(self, target: Target, path: str) -> bytes:
        """A plain GET (the model catalog); raises ``UpstreamError`` on any failure."""
        session = self._require_session()
        try:
            async with session.get(
                target.provider.base_url + path,
                headers=target.provider.request_headers,
                timeout=target.provider.client_timeout,
            ) as response:
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"{target.provider.name}: {type(exc).__name__}") from exc
        if response.status >= 400:
            raise UpstreamError(f"{target.provider.name}: HTTP {response.status}")
        return body

    async def _post(self, target: Target, path: str, payload: bytes) -> aiohttp.ClientResponse:
        provider = target.provider
        return await self._require_session().post(
            provider.base_url + path,
            data=payload,
            headers=provider.headers_for(path),
            timeout=provider.client_timeout,
        )

    async def _failure(
        self, target: Target, response: aiohttp.ClientResponse, attempt: int
    ) -> tuple[UpstreamError, float | None]:
        try:
            raw = await response.read()
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        finally:
            response.release()
        status = response.status
        err = normalise_upstream_error(status, raw)["error"]
        if status in (401, 403):
            # The provider refused the gateway's own key: not the client's fault.
            return UpstreamError(
                f"provider {target.provider.name} rejected the gateway's credentials: "
                f"{err['message']}",
                code="upstream_auth",
            ), None
        headers = {}
        wait = _retry_after(response.headers)
        if wait is not None:
            headers["Retry-After"] = str(max(1, round(wait)))
        error = UpstreamError(
            err["message"],
            status=status,
            type=err["type"],
            param=err["param"],
            code=err["code"],
            headers=headers,
        )
        if wait is not None and wait > self._settings.retry_max_delay:
            return error, None
        return error, wait if wait is not None else self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        cap = min(self._settings.retry_max_delay, self._settings.retry_base_delay * 2**attempt)
        return random.uniform(0, cap)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ProviderClient.start() was not awaited")
        return self._session


_RETRYABLE = frozenset({429, 500, 502, 503, 504}) | frozenset(range(520, 530))


def _retry_after(headers: aiohttp.typedefs.LooseHeaders) -> float | None:
    get = getattr(headers, "get", None)
    if get is None:
        return None
    millis = get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())
