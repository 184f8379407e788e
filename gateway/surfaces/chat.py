"""``POST /v1/chat/completions`` and the pipeline every chat-shaped surface runs, top to bottom.

1 auth → 2 parse → 3 caps and route → 4 budget and rate limits → 5 plan memory (thread, user,
mode) → 6 recall + inject + fit → 7 forward (retries, fallbacks) → 8 relay (JSON or SSE) →
9 finish: remember the turn (committed before the response ends) and account tokens and cost.
Stages 1-2 are each surface's own (``chat_completions`` here, ``gateway/surfaces/messages.py`` for
Anthropic's Messages); ``complete`` runs 3-9 for all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiohttp
import orjson
import psycopg
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from core import metrics
from core.errors import ServiceUnavailable, UpstreamError, UpstreamTimeout
from core.providers.client import Payload, Upstream
from core.providers.router import Target
from core.settings import Settings
from gateway.deps import Deps
from gateway.services import memory_scope
from gateway.services.admission import admit
from gateway.services.auth import Caller, authenticate
from gateway.services.limits import Admission
from gateway.services.observe import Observation, observation
from gateway.services.protocol import ChatRequest, read_body
from gateway.services.streaming import EventStream, StreamTap, answer, relay
from gateway.services.usage import Usage
from gateway.surfaces.native import Native
from memory.offload import offload
from memory.service import Recalled
from memory.store import message_text
from memory.tokens import count_messages, count_text

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DEFAULT_RESERVE = 1024
log = logging.getLogger("cmg.chat")


class Arrival(NamedTuple):
    """A request past stage 1 and the read of stage 2: who sent it, and its bytes."""

    deps: Deps
    caller: Caller
    raw: bytes
    started: float


async def arrive(request: Request, secret: str | None = None) -> Arrival:
    """Stage 1 and the body read, for every surface: the key (``secret`` when the surface found
    it elsewhere than ``Authorization``), noted on the request's observation, then the body
    within ``CMG_MAX_BODY_BYTES``."""
    started = time.perf_counter()
    deps: Deps = request.scope["state"]["deps"]
    obs = observation(request)
    caller = await authenticate(request, deps.keys, secret)
    obs.workspace, obs.key_id = caller.workspace, caller.key_id
    raw = await read_body(request, deps.settings.max_body_bytes)
    return Arrival(deps, caller, raw, started)


async def chat_completions(request: Request) -> Response:
    deps, caller, raw, started = await arrive(request)
    chat = await offload(len(raw), ChatRequest.parse, raw)  # 8 MiB of JSON: ~20 ms of parsing
    done = await complete(request, deps, caller, chat, started)
    if done.stream is not None:
        return EventStream(done.stream, done.status, done.headers)
    return Response(done.body, done.status, done.headers, media_type="application/json")


@dataclass
class Completion:
    """What the pipeline produced: a relayed SSE stream, or the whole JSON body (and parsed)."""

    status: int
    headers: dict[str, str]
    stream: AsyncIterator[bytes] | None = None
    body: bytes = b""
    parsed: Any = None


async def complete(
    request: Request, deps: Deps, caller: Caller, chat: ChatRequest, started: float,
    *, route_label: str = "chat", native: Native | None = None, tap: StreamTap | None = None,
) -> Completion:  # fmt: skip
    """Stages 3-9 for any surface that speaks (or translates to) chat completions.

    caps → route → budget and limits → plan memory → recall + inject + fit → forward → relay
    (JSON or SSE) → finish: remember the turn and account it under ``route_label``. Chat
    completions, Responses and Messages all call this; with ``native`` (``native.py``) the
    forward uses the surface's own format, and ``chat`` still drives the rest. ``tap`` reads a
    stream for memory and usage (a surface's own, when its stream is not chat chunks).
    """
    obs = observation(request)
    chat.check_caps(*caps_for(caller, deps.settings))
    route = deps.router.route(chat.model)
    deps.catalog.check(route[0])
    obs.model = route[0].served
    obs.model_label = model_label(deps, route[0].served)
    admission = await admit(
        deps, caller, lambda: _estimate(chat, route[0].served), size=len(chat.raw)
    )
    plan = memory_scope.plan(request, caller, chat, deps.settings.memory_default)
    recalled = await _recall(deps, plan, chat, route[0]) if plan.read else None
    if recalled is not None:
        obs.memory_items, obs.memory_tokens = _injected_count(recalled), recalled.injected.tokens
        obs.recall_s = recalled.timings.get("recall")
    forwarded: Payload = (
        chat.with_messages(recalled.messages)
        if recalled and recalled.messages != chat.messages
        else chat
    )
    path = "/chat/completions"
    if native is not None:
        forwarded, path = native.payload(chat.model, recalled), native.path
    upstream = await deps.providers.send(path, forwarded, route)
    obs.provider, obs.attempts = upstream.target.provider.name, upstream.attempts
    obs.fallback = upstream.target is not route[0]
    turn = Turn(deps, caller, plan, chat, recalled, admission, upstream, obs, route_label)
    headers = {"X-CMG-Provider": upstream.target.provider.name, **admission.headers()}
    if recalled is not None:
        headers.update(recalled.headers(plan.scope.thread_id))
    if chat.stream and upstream.content_type.startswith("text/event-stream"):
        headers.update(SSE_HEADERS)
        headers["X-Gateway-Overhead-Ms"] = _ms(upstream.started - started)
        stream = relay(upstream, tap or StreamTap(), turn.finish_stream)
        return Completion(upstream.response.status, headers, stream=stream)
    body, parsed = await read_json(upstream)
    if native is not None:
        await turn.finish(*native.answer(parsed))
    else:
        usage = parsed.get("usage") if isinstance(parsed, dict) else None
        await turn.finish(_first_message(parsed), usage)
    headers["X-Gateway-Overhead-Ms"] = _ms(time.perf_counter() - started - (obs.upstream_s or 0.0))
    return Completion(upstream.response.status, headers, body=body, parsed=parsed)


def caps_for(caller: Caller, settings: Settings) -> tuple[int, int]:
    """(max ``n``, max completion tokens): the workspace's settings, else the gateway's."""
    max_n = caller.settings.get("max_n") or settings.max_n
    max_completion = caller.settings.get("max_completion_tokens") or settings.max_completion_tokens
    return int(max_n), int(max_completion)


def model_label(deps: Deps, served: str) -> str:
    """The ``model`` of metrics and usage rollups: a catalog or configured id, else ``other``,
    so client-chosen names never grow the set of series or rollup keys."""
    return served if deps.catalog.knows(served) or deps.router.configured(served) else "other"


def _estimate(chat: ChatRequest, model: str) -> int:
    """Tokens charged up front against TPM: the prompt plus every completion it may produce."""
    return count_messages(chat.messages, model) + _reserve(chat) * chat.n


def _reserve(chat: ChatRequest) -> int:
    value = chat.body.get("max_completion_tokens") or chat.body.get("max_tokens")
    return value if isinstance(value, int) and value > 0 else DEFAULT_RESERVE


async def _recall(
    deps: Deps, plan: memory_scope.Plan, chat: ChatRequest, target: Target
) -> Recalled:
    """Recall, fit and place memory; the first route's provider says how (a fallback keeps it)."""
    served, provider = target.served, target.provider
    window = deps.catalog.context_length(served) or deps.settings.context_window_default
    try:
        return await deps.memory.recall(
            plan.scope, chat.messages, model=served, window=window, reserve=_reserve(chat),
            form=provider.memory_placement, breakpoint=provider.cache_control,
        )  # fmt: skip
    except (SQLAlchemyError, psycopg.Error, OSError) as exc:
        raise ServiceUnavailable("memory is unavailable; retry, or send X-Memory: off") from exc


class Turn:
    """What happens once the answer is known: remember it, then account for it."""

    def __init__(
        self, deps: Deps, caller: Caller, plan: memory_scope.Plan, chat: ChatRequest,
        recalled: Recalled | None, admission: Admission, upstream: Upstream, obs: Observation,
        route_label: str = "chat",
    ) -> None:  # fmt: skip
        self.deps, self.caller, self.plan, self.chat = deps, caller, plan, chat
        self.recalled, self.admission, self.upstream, self.obs = recalled, admission, upstream, obs
        self.route_label = route_label

    async def finish_stream(self, tap: StreamTap) -> None:
        await self.finish(answer(tap), tap.usage, errored=tap.error is not None)

    async def finish(
        self, answer_message: dict[str, Any] | None, usage: Any, *, errored: bool = False
    ) -> None:
        self.obs.upstream_s = time.perf_counter() - self.upstream.started
        try:
            model = self.obs.model or self.chat.model
            size = len(self.chat.raw) if not _has_usage(usage) else 0
            sent = self.recalled.messages if self.recalled else self.chat.messages
            tokens = await offload(size, _tokens, sent, answer_message, usage, model)
            self._account(model, tokens, errored)
        finally:
            if self.plan.active:
                await self._remember(answer_message)

    async def _remember(self, answer_message: dict[str, Any] | None) -> None:
        try:
            await self.deps.memory.remember(
                self.plan.scope, self.chat.messages, answer_message, write=self.plan.write,
                request_id=self.obs.request_id, recalled=self.recalled,
            )  # fmt: skip
        except (SQLAlchemyError, psycopg.Error, OSError) as exc:
            log.error("could not store the turn of %s: %s", self.obs.request_id, type(exc).__name__)
            raise ServiceUnavailable(
                "the answer could not be stored in memory; retry", code="memory_unavailable"
            ) from exc

    def _account(self, model: str, tokens: tuple[int, int, int, bool], errored: bool) -> None:
        prompt, completion, cached, estimated = tokens
        label = self.obs.model_label or "other"
        price = self.deps.catalog.price(model)
        cost = float(price.cost(prompt, completion, cached)) if price else 0.0
        # The block is part of the prompt (the provider's count wins where they differ).
        memory = min(self.recalled.injected.tokens, prompt) if self.recalled else 0
        # The block sits in the uncached tail of the prompt: it costs the normal input price.
        memory_cost = float(price.cost(memory, 0)) if price and memory else 0.0
        self.obs.prompt_tokens, self.obs.completion_tokens = prompt, completion
        self.obs.cached_tokens, self.obs.cost_usd = cached, cost
        self.deps.limiter.reconcile(self.admission, prompt + completion)
        self.deps.usage.add(
            Usage(
                request_id=self.obs.request_id, workspace_id=self.caller.workspace_id,
                key_id=self.caller.key_id, model=model, model_key=label,
                provider=self.obs.provider,
                status=599 if errored else self.upstream.response.status,
                prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
                estimated=estimated, cost_usd=cost,
                latency_ms=(self.obs.upstream_s or 0.0) * 1000, at=datetime.now(UTC),
                memory_tokens=memory, memory_cost_usd=memory_cost, route=self.route_label,
            )
        )  # fmt: skip
        metrics.child(metrics.TOKENS, label, "prompt").inc(prompt)
        metrics.child(metrics.TOKENS, label, "completion").inc(completion)
        if cached:
            metrics.child(metrics.TOKENS, label, "cached").inc(cached)
        if memory:
            metrics.child(metrics.TOKENS, label, "memory").inc(memory)
        if cost:
            metrics.child(metrics.COST, label).inc(cost)
        if memory_cost:
            metrics.child(metrics.MEMORY_COST, label).inc(memory_cost)


def _tokens(
    sent: list[Any], answer_message: dict[str, Any] | None, usage: Any, model: str
) -> tuple[int, int, int, bool]:
    """(prompt, completion, cached, estimated): the provider's usage, else tiktoken's count."""
    if _has_usage(usage):
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        prompt = max(usage["prompt_tokens"], 0)  # a provider's odd figure never bills negative
        completion = _count_or_zero(usage.get("completion_tokens"))
        return prompt, completion, min(_count_or_zero(cached), prompt), False
    prompt = count_messages(sent, model)  # what went upstream: memory included
    completion = count_text(message_text(answer_message), model) if answer_message else 0
    return prompt, completion, 0, True


def _has_usage(usage: Any) -> bool:
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return isinstance(prompt, int) and not isinstance(prompt, bool)


def _count_or_zero(value: Any) -> int:
    return max(value, 0) if isinstance(value, int) and not isinstance(value, bool) else 0


def _injected_count(recalled: Recalled) -> int:
    return len(recalled.injected.items) + (1 if recalled.injected.summary else 0)


def _first_message(parsed: Any) -> dict[str, Any] | None:
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        return message if isinstance(message, dict) else None
    return None


async def read_json(upstream: Upstream) -> tuple[bytes, Any]:
    """The whole upstream body and its parsed JSON (a 502 when it is not JSON)."""
    name = upstream.target.provider.name
    try:
        body = await upstream.response.read()
    except TimeoutError as exc:
        metrics.UPSTREAM_ERRORS.labels(name, "timeout").inc()
        raise UpstreamTimeout(f"provider {name} stopped sending", code="upstream_timeout") from exc
    except aiohttp.ClientError as exc:
        metrics.UPSTREAM_ERRORS.labels(name, "broken").inc()
        raise UpstreamError(
            f"provider {name} broke off the response: {type(exc).__name__}", code="upstream_broken"
        ) from exc
    finally:
        upstream.response.release()
    try:
        return body, orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(
            f"provider {name} returned a body that is not JSON", code="bad_upstream_json"
        ) from exc


def _ms(seconds: float) -> str:
    return f"{max(seconds, 0.0) * 1000:.2f}"
