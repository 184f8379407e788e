"""``cmg up`` (what ``make run`` calls): the whole dev stack in one foreground command.

Starts embedded PostgreSQL/Redis when their URLs are unset, migrates, makes the ``dev``
workspace and key on first run, then runs the gateway, worker and scheduler as child
processes. Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.settings import Settings
from gateway.ops import local_services

_CHILDREN = (("gateway", ["serve"]), ("worker", ["worker"]), ("scheduler", ["scheduler"]))


def up(settings: Settings) -> None:
    from gateway.ops.local_services import services

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with services(settings) as resolved:
        _run(settings, dict(os.environ, DATABASE_URL=resolved.database_url,
                            REDIS_URL=resolved.redis_url))  # fmt: skip
    print("cmg: stopped", file=sys.stderr)


def _run(settings: Settings, env: dict[str, str]) -> None:
    if not settings.master_key:
        env["CMG_MASTER_KEY"] = _secret_file(settings.data_dir / "master_key", "cmgm_")
    from memory import migrate

    migrate.upgrade(env["DATABASE_URL"], embedding_dim=settings.embedding_dim)
    key = _dev_key(settings, env["DATABASE_URL"])
    _sync_catalog(dataclasses.replace(settings, database_url=env["DATABASE_URL"]))
    pidfile = settings.data_dir / "children.pid"
    _kill_leftovers(pidfile)
    children = [_spawn(name, args, env) for name, args in _CHILDREN]
    pidfile.write_text("".join(f"{proc.pid}\n" for proc in children))
    _banner(settings, key, env)
    try:
        _supervise(children)
    finally:
        for proc in children:
            _stop(proc)
        pidfile.unlink(missing_ok=True)


def _dev_key(settings: Settings, database_url: str) -> str:
    """The dev key: made on first run, kept in a 0600 file in the data dir for later runs."""
    from gateway.services import workspaces
    from memory.db import run_transaction

    path = settings.data_dir / "dev_key"

    async def ensure(session: AsyncSession) -> tuple[str, bool]:
        if path.exists():
            secret = path.read_text().strip()
            record = await workspaces.find_key(session, workspaces.hash_secret(secret))
            if record is not None and not record.revoked:
                return secret, False
        if "dev" not in {w.name for w in await workspaces.list_workspaces(session)}:
            await workspaces.create_workspace(session, "dev")
        secret, _ = await workspaces.create_key(session, "dev", name="dev")
        return secret, True

    secret, new = run_transaction(database_url, ensure)
    if new:
        _write_private(path, secret)
    return secret


def _sync_catalog(settings: Settings) -> None:
    """Best effort: without a reachable provider the gateway still starts."""
    from gateway.ops.local_services import in_transaction
    from workers import catalog

    try:
        count = in_transaction(settings, catalog.sync_once, settings)
    except Exception as exc:  # offline or misconfigured provider: say so and go on
        print(f"cmg: model catalog not synced ({type(exc).__name__})", file=sys.stderr)
    else:
        print(f"cmg: model catalog has {count} models", file=sys.stderr)


def _secret_file(path: Path, prefix: str) -> str:
    if path.exists():
        return path.read_text().strip()
    secret = prefix + secrets.token_urlsafe(32)
    _write_private(path, secret)
    return secret


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gateway", *args]
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the launcher dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_leftovers(pidfile: Path) -> None:
    """Children of a crashed previous run still holding ports: stop them first."""
    try:
        pids = [int(line) for line in pidfile.read_text().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gateway" in cmdline:
            local_services.terminate(pid)


def _banner(settings: Settings, key: str, env: dict[str, Any]) -> None:
    base = f"http://{settings.host}:{settings.port}/v1"
    print(
        "\n"
        f"  Context Memory Gateway on {base}\n"
        f"  dev API key:    {key}\n"
        f"  master key:     {env['CMG_MASTER_KEY']}  (admin API)\n"
        f"  MCP (memory):   http://{settings.host}:{settings.port}/mcp  (`cmg mcp`: config)\n"
        + (
            f"  console:        http://{settings.host}:{settings.port}/ui  (sign in with a key)\n"
            if settings.console
            else ""
        )
        + f"  data dir:       {settings.data_dir.resolve()}\n\n"
        f"  from openai import OpenAI\n"
        f'  client = OpenAI(base_url="{base}", api_key="{key}")\n\n'
        "  Ctrl-C stops everything.\n",
        flush=True,
    )


def _supervise(children: list[subprocess.Popen[bytes]]) -> None:
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop:
        for proc in children:
            if proc.poll() is not None:
                print(f"cmg: a child exited with status {proc.returncode}", file=sys.stderr)
                return
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
