"""What the gateway runs with in a bench: extra environment for ``cmg serve`` and extra request
headers for its load. Direct and LiteLLM are measured the same way in every scenario.

Memory is on by default in the gateway, so ``memory-off`` turns it off both ways (setting and
header). A scenario with memory on will also need memory to recall and a worker to embed it:
add a seeding step to ``targets.gateway``, keyed on the scenario's name, when that is wanted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    gateway_env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    key_args: tuple[str, ...] = ()  # extra `cmg key create` arguments for the bench key


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "memory-off",
            "plain forwarding: auth, parse, route, relay; no recall, no capture",
            gateway_env={"CMG_MEMORY_DEFAULT": "off"},
            headers={"X-Memory": "off"},
        ),
        Scenario(
            "limits-on",
            "memory-off plus per-key RPM and TPM limits (never reached): one Redis Lua check "
            "per request, TPM estimated with tiktoken and reconciled, x-ratelimit headers",
            gateway_env={"CMG_MEMORY_DEFAULT": "off"},
            headers={"X-Memory": "off"},
            key_args=("--rpm", "100000000", "--tpm", "1000000000"),
        ),
    )
}
