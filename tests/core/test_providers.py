"""The providers file and the router, as pure functions: resolution order, fallbacks, the memo,
and a clear ``ConfigError`` (naming the setting) for every kind of bad file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.providers.config import ConfigError, ProviderConfig, load
from core.providers.router import Router
from core.settings import Settings


def _config(tmp_path: Path, toml: str, **env: str) -> ProviderConfig:
    path = tmp_path / "providers.toml"
    path.write_text(toml)
    return load(Settings.from_env({"CMG_PROVIDERS": str(path)}), environ=env)


FILE = """
default = "openrouter"

[[provider]]
name = "local"
base_url = "http://127.0.0.1:9/v1/"
api_key_env = "LOCAL_KEY"
prefix = "local/"
models = ["llama-3", "local/qwen"]

[[provider]]
name = "other"
base_url = "http://127.0.0.1:10/v1"
prefix = "oth/"

[alias]
fast = "llama-3"
smart = "oth/big"

[fallback]
"oth/big" = ["llama-3", "openai/gpt-4o"]
fast = ["oth/small"]
"""


def test_aliases_then_model_lists_then_prefixes_then_the_default(tmp_path: Path) -> None:
    config = _config(tmp_path, FILE, LOCAL_KEY="sk-local")
    router = Router(config)
    local = config.providers["local"]
    assert local.api_key == "sk-local" and local.base_url == "http://127.0.0.1:9/v1"
    # an alias resolves first, then its target is looked up like any model id
    assert (router.target("fast").provider.name, router.target("fast").model) == (
        "local",
        "llama-3",
    )
    # a listed model keeps its id, a listed id with the provider's prefix loses the prefix
    assert router.target("llama-3").model == "llama-3"
    assert router.target("local/qwen").model == "qwen"
    # a prefix match strips the prefix; the client's id is what the catalog knows
    other = router.target("oth/mini")
    assert (other.provider.name, other.model, other.served) == ("other", "mini", "oth/mini")
    # anything else goes to the default provider unchanged
    default = router.target("openai/gpt-4o")
    assert (default.provider.name, default.model) == ("openrouter", "openai/gpt-4o")


def test_a_route_is_the_primary_then_its_fallbacks_each_resolved(tmp_path: Path) -> None:
    router = Router(_config(tmp_path, FILE))
    route = router.route("smart")  # alias → oth/big, whose fallbacks are listed under the target
    assert [(t.provider.name, t.model) for t in route] == [
        ("other", "big"), ("local", "llama-3"), ("openrouter", "openai/gpt-4o"),
    ]  # fmt: skip
    # fallbacks named under the alias itself win over none under its target
    assert [t.provider.name for t in router.route("fast")] == ["local", "other"]
    assert router.route("plain/model") == (router.target("plain/model"),)


def test_configured_names_every_id_the_file_mentions(tmp_path: Path) -> None:
    router = Router(_config(tmp_path, FILE))
    for name in ("llama-3", "fast", "smart", "oth/big", "oth/small", "openai/gpt-4o"):
        assert router.configured(name), name
    assert not router.configured("oth/unlisted")  # served by prefix, but not named


def test_the_route_memo_is_bounded_and_least_recently_used(tmp_path: Path) -> None:
    router = Router(_config(tmp_path, FILE), memo_size=2)
    first = router.route("a/1")
    router.route("a/2")
    assert router.route("a/1") is first  # a hit, now the most recent
    router.route("a/3")  # evicts a/2, the least recently used
    assert list(router._memo) == ["a/1", "a/3"]


def test_a_single_provider_table_is_read_as_a_list_of_one(tmp_path: Path) -> None:
    config = _config(tmp_path, '[provider]\nname = "solo"\nbase_url = "http://x"')
    assert config.providers["solo"].base_url == "http://x"


def test_no_file_means_openrouter_alone(tmp_path: Path) -> None:
    config = load(Settings.from_env({}), environ={})
    assert list(config.providers) == ["openrouter"] and config.default == "openrouter"
    assert Router(config).target("anything").provider.name == "openrouter"


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("default = ", "CMG_PROVIDERS"),  # not TOML
        ('[[provider]]\nbase_url = "http://x"', "needs a name and a base_url"),
        ('[[provider]]\nname = "x"', "needs a name and a base_url"),
        ('provider = "x"', "needs a name and a base_url"),
        ('default = "nowhere"', "default provider 'nowhere' is not defined"),
        (
            '[[provider]]\nname = "x"\nbase_url = "http://x"\nmemory_placement = "prompt"',
            "memory_placement must be one of user, system",
        ),
        (
            '[[provider]]\nname = "x"\nbase_url = "http://x"\ncache_control = "yes"',
            "cache_control must be true or false",
        ),
        ('[[provider]]\nname = "x"\nbase_url = "http://x"\ntimeout = "slow"', "timeout"),
        ('[[provider]]\nname = "x"\nbase_url = "http://x"\nretries = "many"', "retries"),
        ('[[provider]]\nname = "x"\nbase_url = "http://x"\nmodels = "gpt"', "models"),
        ('[[provider]]\nname = "x"\nbase_url = "http://x"\nheaders = ["a"]', "headers"),
        ('alias = "fast"', "alias"),
        ('[fallback]\n"a/b" = "c/d"', "fallback"),
    ],
)
def test_a_bad_providers_file_is_a_config_error_naming_what_is_wrong(
    tmp_path: Path, toml: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        _config(tmp_path, toml)


def test_an_unreadable_providers_file_names_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load(Settings.from_env({"CMG_PROVIDERS": str(missing)}), environ={})
