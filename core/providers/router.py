"""Model → provider: aliases first, then exact model lists, then prefixes, then the default.

A route is the primary target followed by its configured fallbacks, each resolved the same way.
Routes are memoised in a small LRU: model ids come from clients, so the memo is capped (the
protocol has already bounded each id's length).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from core.providers.config import Provider, ProviderConfig


@dataclass(frozen=True)
class Target:
    provider: Provider
    model: str  # the id the provider knows
    served: str  # the id the client and the catalog know


class Router:
    def __init__(self, config: ProviderConfig, memo_size: int = 1024) -> None:
        self.config = config
        self._memo: OrderedDict[str, tuple[Target, ...]] = OrderedDict()
        self._memo_size = memo_size
        self._configured = frozenset(_configured(config))

    def route(self, model: str) -> tuple[Target, ...]:
        hit = self._memo.get(model)
        if hit is not None:
            self._memo.move_to_end(model)
            return hit
        hit = self._memo[model] = self._route(model)
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)  # the least recently used
        return hit

    def configured(self, model: str) -> bool:
        """Whether the providers file names ``model`` (a model list, an alias or a fallback)."""
        return model in self._configured

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


def _configured(config: ProviderConfig) -> set[str]:
    names = {m for provider in config.providers.values() for m in provider.models}
    names |= set(config.aliases) | set(config.aliases.values())
    names |= set(config.fallbacks)
    names |= {m for chain in config.fallbacks.values() for m in chain}
    return names


def _strip(model: str, prefix: str) -> str:
    return model[len(prefix) :] if prefix and model.startswith(prefix) else model
