"""``POST /v1/embeddings``: metered like chat, routed like chat, relayed unchanged.

auth → parse → route → budget and rate limits (TPM charged with the input's tokens) →
forward → relay → account: the provider's ``usage.prompt_tokens`` (else tiktoken's count),
costed at the catalog's prompt price, recorded under the route ``embeddings``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from core import metrics
from core.errors import BadRequest
from core.providers.client import Upstream
from gateway.deps import Deps
from gateway.services.admission import admit
from gateway.services.auth import Caller
from gateway.services.observe import Observation, observation
from gateway.services.protocol import ForwardBody, parse_object, require_model
from gateway.services.usage import Usage
from gateway.surfaces.chat import arrive, model_label, read_json
from memory.tokens import count_text


async def embeddings(request: Request) -> Response:
    deps, caller, raw, _ = await arrive(request)
    obs = observation(request)
    body = parse_object(raw)
    model = require_model(body)
    if "input" not in body:
        raise BadRequest("you must provide an input parameter", param="input", code="missing_input")
    route = deps.router.route(model)
    deps.catalog.check(route[0])
    served = obs.model = route[0].served
    obs.model_label = model_label(deps, served)
    admission = await admit(deps, caller, lambda: input_tokens(body["input"], served))
    upstream = await deps.providers.send("/embeddings", ForwardBody(raw, body, model), route)
    obs.provider, obs.attempts = upstream.target.provider.name, upstream.attempts
    payload, parsed = await read_json(upstream)
    prompt = _account(deps, caller, obs, upstream, body["input"], parsed)
    deps.limiter.reconcile(admission, prompt)
    headers = {"X-CMG-Provider": upstream.target.provider.name, **admission.headers()}
    return Response(payload, upstream.response.status, headers, media_type="application/json")


def input_tokens(value: Any, model: str) -> int:
    """Tokens of an embeddings ``input`` (a string, token array, or a list of either): text by
    tiktoken, token arrays by their length. Other shapes count 0; the provider refuses them."""
    items = value if isinstance(value, list) and not _is_token_array(value) else [value]
    total = 0
    for item in items:
        if isinstance(item, str):
            total += count_text(item, model)
        elif isinstance(item, list) and _is_token_array(item):
            total += len(item)
    return total


def _is_token_array(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, int) for v in value)


def _account(
    deps: Deps, caller: Caller, obs: Observation, upstream: Upstream, value: Any, parsed: Any
) -> int:
    """Record the request's tokens and cost; returns the prompt tokens charged."""
    model = obs.model or ""
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    reported = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    ok = upstream.response.status < 400
    estimated = not isinstance(reported, int)
    prompt = reported if isinstance(reported, int) else input_tokens(value, model) if ok else 0
    price = deps.catalog.price(model)
    cost = float(prompt * price[0]) if price else 0.0
    obs.upstream_s = time.perf_counter() - upstream.started
    obs.prompt_tokens, obs.completion_tokens, obs.cost_usd = prompt, 0, cost
    deps.usage.add(
        Usage(
            request_id=obs.request_id, workspace_id=caller.workspace_id, key_id=caller.key_id,
            model=model, provider=obs.provider, status=upstream.response.status,
            prompt_tokens=prompt, completion_tokens=0, cached_tokens=0, estimated=estimated,
            cost_usd=cost, latency_ms=obs.upstream_s * 1000, at=datetime.now(UTC),
            route="embeddings", model_key=obs.model_label or "other",
        )
    )  # fmt: skip
    label = obs.model_label or "other"
    metrics.child(metrics.TOKENS, label, "prompt").inc(prompt)
    if cost:
        metrics.child(metrics.COST, label).inc(cost)
    return prompt
