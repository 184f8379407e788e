"""A gateway reachable from other machines refuses a guessable master key (``cmg serve``)."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.ops import local_services
from gateway.ops.exposure import EXAMPLE_MASTER_KEY, check_master_key, is_loopback, weakness
from tests.conftest import ROOT, clean_env


def test_the_example_key_is_the_one_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^CMG_MASTER_KEY=(.*)$", example, re.M)[1] == EXAMPLE_MASTER_KEY  # type: ignore[index]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (EXAMPLE_MASTER_KEY, "example key"),
        ("cmgm_test_master_key", "20 characters"),
        ("a" * 64, "bits"),
        ("password" * 4, "bits"),
    ],
)
def test_guessable_keys_are_named_with_the_reason(key: str, reason: str) -> None:
    found = weakness(key)
    assert found is not None and reason in found


def test_random_keys_pass() -> None:
    for _ in range(200):
        assert weakness("cmg_master_" + secrets.token_urlsafe(32)) is None
        assert weakness(secrets.token_urlsafe(24)) is None
        assert weakness(secrets.token_hex(16)) is None  # 128 bits as 32 hex characters


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_accepts_any_key(host: str) -> None:
    assert is_loopback(host)
    check_master_key(EXAMPLE_MASTER_KEY, host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "gw.example.com"])
def test_other_addresses_refuse_a_weak_key_but_not_a_missing_one(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(SystemExit, match="refusing to listen"):
        check_master_key(EXAMPLE_MASTER_KEY, host)
    check_master_key("", host)  # no key: the admin API is closed
    check_master_key("cmg_master_" + secrets.token_urlsafe(32), host)


def test_cmg_serve_with_the_example_key_on_every_interface_exits(tmp_path: Path) -> None:
    env = {**clean_env(), "CMG_MASTER_KEY": EXAMPLE_MASTER_KEY, "CMG_DATA_DIR": str(tmp_path)}
    port = str(local_services.free_port())
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", port],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "example key published in .env.example" in done.stderr
    assert list(tmp_path.iterdir()) == []  # refused before starting PostgreSQL or Redis
