"""The *budget and rate limits* stage: per-key and per-workspace RPM/TPM, shared through Redis.

One Lua script per request checks and charges every applicable limit atomically: a sliding
window estimated from the current and previous fixed minute (the previous minute weighted by
how much of it still overlaps the last 60 s). TPM is charged with an estimate (prompt tokens
by tiktoken + ``max_tokens``) and reconciled with the real usage after the response.
When Redis is unreachable the limiter fails open by default (counted in a metric).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from core import metrics
from core.errors import RateLimited, ServiceUnavailable
from gateway.services.auth import Caller
from gateway.services.scriptpipe import ScriptPipe

log = logging.getLogger("cmg.limits")
WINDOW_MS = 60_000
_RECONCILE_EVERY = 0.2  # seconds between writes of the summed TPM corrections

# KEYS[i]: one subject prefix per limit; ARGV: now_ms, tokens, then rpm, tpm per subject.
# Returns {allowed, subject_index, kind, retry_ms, then per subject: rpm_left, tpm_left}.
_SCRIPT = """
local now = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local window = 60000
local idx = math.floor(now / window)
local frac = (now % window) / window
local left = {}
for i, subject in ipairs(KEYS) do
  local rpm = tonumber(ARGV[1 + 2 * i])
  local tpm = tonumber(ARGV[2 + 2 * i])
  local cur = subject .. ':' .. idx
  local prev = subject .. ':' .. (idx - 1)
  local cr = tonumber(redis.call('HGET', cur, 'r') or '0')
  local ct = tonumber(redis.call('HGET', cur, 't') or '0')
  local pr = tonumber(redis.call('HGET', prev, 'r') or '0')
  local pt = tonumber(redis.call('HGET', prev, 't') or '0')
  local used_r = pr * (1 - frac) + cr
  local used_t = pt * (1 - frac) + ct
  if rpm > 0 and used_r + 1 > rpm then
    local wait = window - (now % window)
    if cr + 1 <= rpm and pr > 0 then wait = math.ceil(window * (used_r + 1 - rpm) / pr) end
    return {0, i, 'requests', wait}
  end
  if tpm > 0 and used_t + tokens > tpm then
    local wait = window - (now % window)
    if ct + tokens <= tpm and pt > 0 then
      wait = math.ceil(window * (used_t + tokens - tpm) / pt)
    end
    return {0, i, 'tokens', wait}
  end
  left[#left + 1] = math.floor(rpm - used_r - 1)
  left[#left + 1] = math.floor(tpm - used_t - tokens)
end
for i, subject in ipairs(KEYS) do
  local cur = subject .. ':' .. idx
  redis.call('HINCRBY', cur, 'r', 1)
  redis.call('HINCRBY', cur, 't', tokens)
  redis.call('PEXPIRE', cur, 2 * window + 1000)
end
local out = {1, 0, '', 0}
for _, v in ipairs(left) do out[#out + 1] = v end
return out
"""

_RECONCILE = """
local idx = math.floor(tonumber(ARGV[1]) / 60000)
for _, subject in ipairs(KEYS) do
  local cur = subject .. ':' .. idx
  if redis.call('EXISTS', cur) == 1 then redis.call('HINCRBY', cur, 't', tonumber(ARGV[2])) end
end
return 1
"""


@dataclass(frozen=True)
class Limit:
    subject: str  # "key:<id>" or "ws:<id>"
    rpm: int
    tpm: int


@dataclass
class Admission:
    """What a request was charged, for the response headers and the reconciliation."""

    limits: tuple[Limit, ...]
    tokens: int
    charged_at_ms: int
    rpm_left: int | None = None
    tpm_left: int | None = None
    failed_open: bool = False

    def headers(self) -> dict[str, str]:
        if not self.limits or self.failed_open:
            return {}
        reset = _duration((WINDOW_MS - self.charged_at_ms % WINDOW_MS) / 1000)
        headers: dict[str, str] = {}
        rpm = min((lim.rpm for lim in self.limits if lim.rpm), default=0)
        tpm = min((lim.tpm for lim in self.limits if lim.tpm), default=0)
        if rpm:
            headers["x-ratelimit-limit-requests"] = str(rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.rpm_left or 0))
            headers["x-ratelimit-reset-requests"] = reset
        if tpm:
            headers["x-ratelimit-limit-tokens"] = str(tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm_left or 0))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers


def limits_for(caller: Caller) -> tuple[Limit, ...]:
    """The key's own limits and its workspace's: every metered route is charged against both."""
    limits = []
    if caller.rpm_limit or caller.tpm_limit:
        limits.append(Limit(f"key:{caller.key_id}", caller.rpm_limit or 0, caller.tpm_limit or 0))
    rpm, tpm = caller.settings.get("rpm"), caller.settings.get("tpm")
    if rpm or tpm:
        limits.append(Limit(f"ws:{caller.workspace_id}", int(rpm or 0), int(tpm or 0)))
    return tuple(limits)


class Limiter:
    """Admits requests through the Lua check; reconciles TPM in the background.

    Every check is one EVALSHA, but concurrent checks share a round trip: the checks asked for
    in one event-loop turn go out in one write on a connection of their own
    (``gateway.services.scriptpipe``). Reconciliations (the real token count minus the estimate) are
    summed per window and written every ``_RECONCILE_EVERY`` seconds, not one call per request.
    """

    def __init__(self, redis_url: str, *, fail_open: bool, timeout: float = 1.0) -> None:
        self._fail_open = fail_open
        self._check = ScriptPipe(redis_url, _SCRIPT, timeout=timeout)
        self._reconcile = ScriptPipe(redis_url, _RECONCILE, timeout=timeout)
        self._deltas: dict[tuple[tuple[str, ...], int], int] = {}
        self._flush_scheduled = False
        self._pending: set[asyncio.Task[Any]] = set()

    async def admit(self, limits: tuple[Limit, ...], tokens: int) -> Admission:
        now_ms = int(time.time() * 1000)
        admission = Admission(limits, tokens, now_ms)
        if not limits:
            return admission
        keys = [f"cmg:rl:{lim.subject}" for lim in limits]
        args: list[int] = [now_ms, tokens]
        for lim in limits:
            args += [lim.rpm, lim.tpm]
        try:
            result = await self._check(keys, args)
        except (RedisError, OSError) as exc:
            return self._unavailable(admission, exc)
        allowed, index, kind, wait_ms = int(result[0]), int(result[1]), result[2], int(result[3])
        if not allowed:
            limit = limits[index - 1]
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            metrics.RATELIMITED.labels(f"{limit.subject.split(':')[0]}_{kind}").inc()
            retry = max(1, math.ceil(wait_ms / 1000))
            scope = "API key" if limit.subject.startswith("key:") else "workspace"
            cap = limit.rpm if kind == "requests" else limit.tpm
            unit = "requests" if kind == "requests" else "tokens"
            raise RateLimited(
                f"rate limit reached for this {scope}: {cap} {unit} per minute; retry in {retry}s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            )
        lefts = [int(v) for v in result[4:]]
        rpm_lefts = [lefts[2 * i] for i, lim in enumerate(limits) if lim.rpm]
        tpm_lefts = [lefts[2 * i + 1] for i, lim in enumerate(limits) if lim.tpm]
        admission.rpm_left = min(rpm_lefts) if rpm_lefts else None
        admission.tpm_left = min(tpm_lefts) if tpm_lefts else None
        return admission

    def reconcile(self, admission: Admission, actual_tokens: int | None) -> None:
        """Charge the difference between the estimate and the real usage (in the background)."""
        if not admission.limits or admission.failed_open or actual_tokens is None:
            return
        delta = actual_tokens - admission.tokens
        if delta == 0 or not any(lim.tpm for lim in admission.limits):
            return
        keys = tuple(f"cmg:rl:{lim.subject}" for lim in admission.limits)
        slot = (keys, admission.charged_at_ms // WINDOW_MS)
        self._deltas[slot] = self._deltas.get(slot, 0) + delta
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(_RECONCILE_EVERY, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        deltas, self._deltas = self._deltas, {}
        task = asyncio.get_running_loop().create_task(self._flush(deltas))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _flush(self, deltas: dict[tuple[tuple[str, ...], int], int]) -> None:
        calls = [
            self._reconcile(list(keys), [window * WINDOW_MS, delta])
            for (keys, window), delta in deltas.items()
            if delta
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # a lost correction only makes the next minute's TPM estimate less exact
            log.warning("rate-limit reconcile failed: %s", type(failed[0]).__name__)

    async def close(self) -> None:
        if self._deltas:
            self._start_flush()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self._check.close()
        await self._reconcile.close()

    def _unavailable(self, admission: Admission, exc: Exception) -> Admission:
        if not self._fail_open:
            raise ServiceUnavailable("the rate limiter is unavailable; retry shortly") from exc
        metrics.FAIL_OPEN.inc()
        log.warning("rate limiter unreachable, failing open: %s", type(exc).__name__)
        admission.failed_open = True
        return admission


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``250ms``."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
