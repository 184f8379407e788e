"""The things measured: the mock upstream itself (direct), the gateway, and LiteLLM.

Each is a context manager that starts the target on loopback, waits until it answers, yields a
``Target`` for the harness and stops everything it started on the way out, failure or not.
CPU placement follows ``../shared/bench/run_proxy.sh``: the proxy alone on CPU 1, the mock and
the load generator on CPU 0. Ports are picked free, so a mock someone else left on :9000 (the
shared scripts' fixed port) is never measured by mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import Service, free_port, run_step, wait_http
from bench.scenarios import Scenario

PROXY_CPU = 1
CLIENT_CPU = 0
MODEL = "mock-gpt"
LITELLM_KEY = "sk-bench"  # the master key in ../shared/bench/configs/litellm.yaml
_SHARED_MOCK_BASE = "http://127.0.0.1:9000/v1"
# Gateway settings a developer's shell may carry; the bench sets its own.
_GATEWAY_ENV_PREFIXES = ("CMG_", "DATABASE_URL", "REDIS_URL", "OPENROUTER_")


@dataclass(frozen=True)
class Target:
    label: str
    base_url: str  # OpenAI convention: includes /v1
    api_key: str
    pid: int  # sampled for CPU and RSS (with its descendants)
    headers: Mapping[str, str] = field(default_factory=dict)
    services: tuple[int, ...] = ()  # its database and Redis: its own load, not the box's


@contextlib.contextmanager
def mock_upstream(shared: Path, python: Path, logs: Path) -> Iterator[Target]:
    """The shared zero-delay mock; as a target it is the 'direct' row, the floor."""
    port = free_port()
    script = shared / "bench" / "mock_upstream.py"
    argv: list[str | Path] = [
        python,
        script,
        *f"--host 127.0.0.1 --port {port} --delay-ms 0".split(),
    ]
    mock = Service("mock", argv, log=logs / "mock.log", cpu=CLIENT_CPU)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", mock, timeout=30)
        yield Target("direct", f"http://127.0.0.1:{port}/v1", LITELLM_KEY, mock.pid)
    finally:
        mock.stop()


@contextlib.contextmanager
def gateway(upstream: str, scenario: Scenario, logs: Path) -> Iterator[Target]:
    """``cmg serve`` on a fresh data dir: embedded PostgreSQL + Redis, a key, a synced catalog."""
    from gateway.ops import local_services  # the project venv runs this module

    data_dir = Path(tempfile.mkdtemp(prefix="cmg-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, data_dir, True)
        stack.callback(_stop_embedded, data_dir)  # also covers a half-started service
        env = _gateway_env(scenario, upstream)
        env["DATABASE_URL"] = local_services.start_postgres(data_dir).url
        redis = local_services.start_redis(data_dir)
        env["REDIS_URL"] = redis.url
        services = (int((data_dir / "pg" / "postmaster.pid").read_text().split()[0]), redis.pid)
        key = _prepare(env, logs / "gateway-setup.log", scenario.key_args)
        port = free_port()
        argv: list[str | Path] = [_cmg(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        server = Service("gateway", argv, log=logs / "gateway.log", cpu=PROXY_CPU, env=env)
        stack.callback(server.stop)
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{base_url}/models", server, headers={"Authorization": f"Bearer {key}"})
        yield Target("gateway", base_url, key, server.pid, dict(scenario.headers), services)


@contextlib.contextmanager
def litellm(binary: Path, shared: Path, upstream: str, logs: Path) -> Iterator[Target]:
    """LiteLLM's proxy with the shared config (no DB, no callbacks, no retries), one worker."""
    config = (shared / "bench" / "configs" / "litellm.yaml").read_text()
    config_path = logs / "litellm.yaml"
    logs.mkdir(parents=True, exist_ok=True)
    config_path.write_text(config.replace(_SHARED_MOCK_BASE, upstream))
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "DISABLE_ADMIN_UI": "True",
    }
    argv: list[str | Path] = [
        binary,
        "--config",
        config_path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    argv += ["--num_workers", "1"]
    proxy = Service("litellm", argv, log=logs / "litellm.log", cpu=PROXY_CPU, env=env)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        auth = {"Authorization": f"Bearer {LITELLM_KEY}"}
        wait_http(f"{base_url}/models", proxy, headers=auth, timeout=240)
        yield Target("litellm", base_url, LITELLM_KEY, proxy.pid)
    finally:
        proxy.stop()


def _gateway_env(scenario: Scenario, upstream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_GATEWAY_ENV_PREFIXES)}
    env.update(OPENROUTER_BASE_URL=upstream, OPENROUTER_API_KEY="sk-mock")
    env.update(scenario.gateway_env)
    return env


def _prepare(env: dict[str, str], log: Path, key_args: tuple[str, ...] = ()) -> str:
    """Schema, a ``bench`` workspace and key, and the catalog synced from the mock's /models."""
    cmg = _cmg()
    run_step([cmg, "migrate"], env=env, log=log)
    run_step([cmg, "workspace", "create", "bench"], env=env, log=log)
    created = json.loads(
        run_step(
            [cmg, "key", "create", "--workspace", "bench", "--json", *key_args], env=env, log=log
        )
    )
    run_step([cmg, "catalog", "sync"], env=env, log=log)
    return str(created["key"])


def _cmg() -> Path:
    beside = Path(sys.executable).parent / "cmg"
    found = beside if beside.exists() else shutil.which("cmg")
    if not found:
        raise SystemExit("cmg not found: run `make venv` first")
    return Path(found)


def _stop_embedded(data_dir: Path) -> None:
    """Stop the PostgreSQL and Redis this run started in ``data_dir`` (if they are up)."""
    from gateway.ops import local_services

    pgdata = (data_dir / "pg").resolve()
    if (pgdata / "postmaster.pid").exists():
        user = "embedded_postgres" if os.geteuid() == 0 else None
        local_services.EmbeddedPostgres(pgdata, pgdata, user).stop()
    pidfile = data_dir / "redis" / "redis.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)  # raises once it is gone
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
