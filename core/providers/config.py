"""Providers, aliases and fallbacks: OpenRouter by default, more from a TOML file.

```toml
default = "openrouter"              # provider for models no other rule claims

[[provider]]
name = "groq"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "GROQ_API_KEY"        # the key is read from this env var, never written here
prefix = "groq/"                    # "groq/llama-3.1-8b-instant" → model "llama-3.1-8b-instant"
models = ["llama-3.3-70b"]          # exact ids routed here as they are
timeout = 120                       # seconds to first byte / between chunks
connect_timeout = 5
retries = 2
catalog = true                      # sync GET /models into the catalog
headers = { "X-Title" = "cmg" }
memory_placement = "user"           # where recalled memory goes: "user" (a text part of the
                                    # latest user message) or "system" (a message before it)
cache_control = false               # mark the end of the stable prefix for Anthropic models

[alias]
fast = "groq/llama-3.1-8b-instant"

[fallback]
"openai/gpt-4o" = ["groq/llama-3.3-70b", "anthropic/claude-sonnet-4"]
```
"""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from core.settings import Settings

FORMS = ("user", "system")  # where a provider takes recalled memory (memory/context.py)
MODES = ("translate", "native")  # how /v1/responses and /v1/messages reach a provider
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    api_key: str = field(repr=False)
    prefix: str = ""
    models: frozenset[str] = frozenset()
    timeout: float = 600.0
    connect_timeout: float = 10.0
    retries: int = 2
    catalog: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    memory_placement: str = "user"
    cache_control: bool = False
    responses: str = "translate"  # "native": the provider serves /responses itself
    messages: str = "translate"  # "native": the provider serves Anthropic's /messages itself

    # Built once per provider (providers are immutable), not once per request.
    @functools.cached_property
    def request_headers(self) -> CIMultiDict[str]:
        headers = CIMultiDict({"Content-Type": "application/json", **self.headers})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def headers_for(self, path: str) -> CIMultiDict[str]:
        """The headers of a call to ``path``: Anthropic's own for its ``/messages``."""
        return self.messages_headers if path == "/messages" else self.request_headers

    @functools.cached_property
    def messages_headers(self) -> CIMultiDict[str]:
        """Anthropic's own headers for a native ``/messages`` call: the key as ``x-api-key``
        too, and an ``anthropic-version`` unless the providers file sets one."""
        headers = CIMultiDict(self.request_headers)
        if self.api_key:
            headers["x-api-key"] = self.api_key
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
        return headers

    @functools.cached_property
    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.timeout
        )


@dataclass(frozen=True)
class ProviderConfig:
    providers: Mapping[str, Provider]
    default: str
    aliases: Mapping[str, str]
    fallbacks: Mapping[str, tuple[str, ...]]


class ConfigError(ValueError):
    pass


def load(settings: Settings, environ: Mapping[str, str] | None = None) -> ProviderConfig:
    """The providers file (if any) over the built-in OpenRouter provider."""
    env = os.environ if environ is None else environ
    openrouter = Provider(
        name="openrouter",
        base_url=settings.openrouter_base_url.rstrip("/"),
        api_key=settings.openrouter_api_key,
        timeout=settings.upstream_timeout,
        connect_timeout=settings.upstream_connect_timeout,
        retries=settings.upstream_retries,
        memory_placement=_placement(settings.memory_placement, "CMG_MEMORY_PLACEMENT"),
        cache_control=settings.cache_control,
    )
    raw: dict[str, Any] = {}
    if settings.providers_file:
        path = Path(settings.providers_file)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"CMG_PROVIDERS {path}: {exc}") from exc
    providers = {"openrouter": openrouter}
    entries = raw.get("provider", [])
    for entry in entries if isinstance(entries, list) else [entries]:
        provider = _provider(entry, settings, env)
        providers[provider.name] = provider
    default = str(raw.get("default", "openrouter"))
    if default not in providers:
        raise ConfigError(f"default provider {default!r} is not defined")
    aliases = {str(k): str(v) for k, v in _table(raw.get("alias", {}), "[alias]").items()}
    fallbacks = {
        str(k): tuple(str(m) for m in _list(v, f"[fallback] {k!r}"))
        for k, v in _table(raw.get("fallback", {}), "[fallback]").items()
    }
    return ProviderConfig(providers, default, aliases, fallbacks)


def _provider(entry: Any, settings: Settings, env: Mapping[str, str]) -> Provider:
    if not isinstance(entry, dict) or not entry.get("name") or not entry.get("base_url"):
        raise ConfigError("every [[provider]] needs a name and a base_url")
    key_env = entry.get("api_key_env")
    where = f"provider {entry['name']!r}:"
    return Provider(
        name=str(entry["name"]),
        base_url=str(entry["base_url"]).rstrip("/"),
        api_key=env.get(str(key_env), "") if key_env else "",
        prefix=str(entry.get("prefix", "")),
        models=frozenset(str(m) for m in _list(entry.get("models", []), f"{where} models")),
        timeout=_number(entry.get("timeout", settings.upstream_timeout), f"{where} timeout"),
        connect_timeout=_number(
            entry.get("connect_timeout", settings.upstream_connect_timeout),
            f"{where} connect_timeout",
        ),
        retries=int(_number(entry.get("retries", settings.upstream_retries), f"{where} retries")),
        catalog=_flag(entry.get("catalog", True), f"{where} catalog"),
        headers={
            str(k): str(v) for k, v in _table(entry.get("headers", {}), f"{where} headers").items()
        },
        memory_placement=_placement(
            entry.get("memory_placement", settings.memory_placement), "memory_placement"
        ),
        cache_control=_flag(entry.get("cache_control", settings.cache_control), "cache_control"),
        responses=_mode(entry.get("responses", "translate"), f"{where} responses"),
        messages=_mode(entry.get("messages", "translate"), f"{where} messages"),
    )


def _placement(value: Any, where: str) -> str:
    if value not in FORMS:
        raise ConfigError(f"{where} must be one of {', '.join(FORMS)}, not {value!r}")
    return str(value)


def _mode(value: Any, where: str) -> str:
    if value not in MODES:
        raise ConfigError(f"{where} must be one of {', '.join(MODES)}, not {value!r}")
    return str(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where} must be a number ≥ 0, not {value!r}")
    return float(value)


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of model ids, not {value!r}")
    return value


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table (key = value pairs), not {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    return value
