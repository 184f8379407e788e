"""The ``cmg`` CLI as a user runs it: real processes against the real database."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import openai
import pytest

from tests.conftest import Gateway


def cmg(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=gateway.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_workspace_and_key_lifecycle_through_the_cli(gateway: Gateway) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    assert cmg(gateway, "workspace", "create", name).returncode == 0
    created = cmg(gateway, "key", "create", "--workspace", name, "--name", "ci", "--json")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)  # exactly one JSON object
    assert record["key"].startswith("cmg_") and record["workspace"] == name

    listed = cmg(gateway, "key", "list", "--workspace", name, "--json")
    keys = json.loads(listed.stdout)
    assert [k["id"] for k in keys] == [record["id"]]
    assert record["key"] not in listed.stdout

    with gateway.client(record["key"]) as client:
        client.chat.completions.create(
            model="mock/gpt", messages=[{"role": "user", "content": "x"}]
        )

    assert cmg(gateway, "key", "revoke", record["id"]).returncode == 0
    plain = cmg(gateway, "key", "list", "--workspace", name)
    assert "revoked" in plain.stdout


def test_cli_prints_just_the_secret_without_json(gateway: Gateway) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    cmg(gateway, "workspace", "create", name)
    out = cmg(gateway, "key", "create", "--workspace", name, "--expires-in", "30").stdout.strip()
    assert out.startswith("cmg_") and len(out) == 47


@pytest.mark.parametrize(
    "args",
    [
        ("key", "create", "--workspace", "no-such-workspace"),
        ("key", "revoke", "00000000-0000-0000-0000-000000000000"),
        ("key", "create", "--workspace", "x", "--expires-in", "-1"),
    ],
)
def test_cli_errors_are_one_clear_line(gateway: Gateway, args: tuple[str, ...]) -> None:
    result = cmg(gateway, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("cmg: ") and "Traceback" not in result.stderr


def test_duplicate_workspace_is_refused(gateway: Gateway) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    assert cmg(gateway, "workspace", "create", name).returncode == 0
    again = cmg(gateway, "workspace", "create", name)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_revoked_key_from_cli_is_rejected_by_sdk(gateway: Gateway) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    cmg(gateway, "workspace", "create", name)
    record = json.loads(cmg(gateway, "key", "create", "--workspace", name, "--json").stdout)
    cmg(gateway, "key", "revoke", record["id"])
    import time

    time.sleep(1.2)
    with gateway.client(record["key"]) as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
