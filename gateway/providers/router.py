"""Model → provider: aliases first, then exact model lists, then prefixes, then the default.

A route is the primary target followed by its configured fallbacks, each resolved the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.providers.config import Provider, ProviderConfig


@dataclass(frozen=True)
class Target:
    provider: Provider
    model: str  # the id the provider knows
    served: str  # the id the client and the catalog know


class Router:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._cache: dict[str, tuple[Target, ...]] = {}

    def route(self, model: str) -> tuple[Target, ...]:
        hit = self._cache.get(model)
        if hit is None:
            hit = self._route(model)
            if len(self._cache) < 10_000:
                self._cache[model] = hit
        return hit

    def target(self, model: str) -> Target:
        model = self.config.aliases.get(model, model)
        providers = self.config.providers.values()
        for provider in providers:
            if model in provider.models:
                return Target(provider, _strip(model, provider.prefix), model)
        for provider in providers:
            if provider.prefix and model.startswith(provider.prefix):
                return Target(provider, model[len(provider.prefix) :], model)
        return Target(self.config.providers[self.config.default], model, model)

    def _route(self, model: str) -> tuple[Target, ...]:
        primary = self.target(model)
        names = self.config.fallbacks.get(model) or self.config.fallbacks.get(primary.served, ())
        return (primary, *(self.target(name) for name in names))


def _strip(model: str, prefix: str) -> str:
    return model[len(prefix) :] if prefix and model.startswith(prefix) else model
