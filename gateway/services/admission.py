"""Every metered route's *budget and rate limits* stage: the budget, then key and workspace limits.

Chat completions, embeddings and the memory API call ``admit`` after authenticating, so a key
limited to N requests a minute gets N in all, whichever routes it uses. The token estimate is
computed only when a TPM limit applies (tiktoken on a long prompt is not free).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from core.errors import QuotaExceeded, RateLimited
from gateway.services.auth import Caller
from gateway.services.limits import Admission, Limiter, limits_for
from gateway.services.usage import UsageRecorder
from memory.offload import offload


class Gates(Protocol):
    """What ``admit`` needs of the app's ``Deps`` (which satisfies it)."""

    @property
    def usage(self) -> UsageRecorder: ...

    @property
    def limiter(self) -> Limiter: ...


def _no_tokens() -> int:
    return 0


async def admit(
    deps: Gates,
    caller: Caller,
    tokens: Callable[[], int] = _no_tokens,
    *,
    budget: bool = True,
    size: int = 0,
) -> Admission:
    """Charge one request (and ``tokens()`` against TPM), else ``RateLimited``/``QuotaExceeded``.

    ``budget=False`` skips the spending check for calls that cost nothing and must stay open
    to a workspace over budget (deleting what it stored). ``size`` (the request's bytes) sends
    a large estimate off the event loop.
    """
    if budget:
        try:
            await deps.usage.check_budget(
                caller.workspace_id, caller.settings.get("monthly_budget_usd")
            )
        except QuotaExceeded:
            deps.usage.refused(caller.workspace_id, caller.key_id, "budget")
            raise
    limits = limits_for(caller)
    estimate = await offload(size, tokens) if any(lim.tpm for lim in limits) else 0
    try:
        return await deps.limiter.admit(limits, estimate)
    except RateLimited:
        deps.usage.refused(caller.workspace_id, caller.key_id, "rate_limit")
        raise
