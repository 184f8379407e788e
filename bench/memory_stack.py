"""A throw-away memory stack for the recall eval and bench: everything real, loopback only.

Embedded PostgreSQL (+pgvector) and Redis in a temp dir, the schema, a workspace and its key,
then (when asked) ``python -m gateway serve`` and ``python -m gateway worker`` as child processes
in their own process groups. Leaving the ``with`` block stops every process this started and
deletes the temp dir, failure or not.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.processes import Service, ServiceFailed, free_port, stop_on_signals, wait_http

ROOT = Path(__file__).resolve().parents[1]
_GATEWAY_ENV_PREFIXES = ("CMG_", "DATABASE_URL", "REDIS_URL", "OPENROUTER_")


@dataclass
class Stack:
    data_dir: Path
    logs: Path
    database_url: str
    redis_url: str
    env: dict[str, str]
    services: list[Service] = field(default_factory=list)
    gateway_url: str = ""
    notes: list[str] = field(default_factory=list)

    def tenant(self, name: str) -> tuple[str, str]:
        """A new workspace and a key for it: (workspace id, key)."""
        from gateway.services import workspaces

        async def work(session: Any) -> tuple[str, str]:
            workspace = await workspaces.create_workspace(session, name)
            secret, _ = await workspaces.create_key(session, name)
            return str(workspace.id), secret

        from memory.db import run_transaction

        return run_transaction(self.database_url, work)

    def start_gateway(
        self, *, cpu: int | None = None, extra_env: dict[str, str] | None = None
    ) -> str:
        port = free_port()
        env = {**self.env, **(extra_env or {})}
        argv = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        service = Service("gateway", argv, log=self.logs / "gateway.log", cpu=cpu, env=env)
        self.services.append(service)
        self.gateway_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.gateway_url}/healthz", service, timeout=120)
        return self.gateway_url

    def stop_gateway(self) -> None:
        for service in [s for s in self.services if s.name == "gateway"]:
            service.stop()
            self.services.remove(service)
        self.gateway_url = ""

    def start_worker(self, *, cpu: int | None = None) -> bool:
        """The RQ worker (embeds what the gateway stores); False when the command is missing."""
        if not _worker_command_ready():
            self.notes.append("`python -m gateway worker` is not available")
            return False
        argv = [sys.executable, "-m", "gateway", "worker"]
        service = Service("worker", argv, log=self.logs / "worker.log", cpu=cpu, env=self.env)
        self.services.append(service)
        time.sleep(1.0)
        if not service.alive():
            raise ServiceFailed(f"worker exited {service.proc.returncode}:\n{service.tail()}")
        return True


@contextlib.contextmanager
def memory_stack(
    logs: Path, *, upstream: str = "http://127.0.0.1:9/v1", keep: Path | None = None
) -> Iterator[Stack]:
    """The stack in a temp dir, or in ``keep`` (created or reused, and left in place)."""
    from gateway.ops import local_services
    from memory import migrate

    if threading.current_thread() is threading.main_thread():
        stop_on_signals()  # every runner on this stack stops it on SIGTERM too, not only Ctrl-C
    data_dir = keep.resolve() if keep else Path(tempfile.mkdtemp(prefix="cmg-recall-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        if keep is None:
            cleanup.callback(shutil.rmtree, data_dir, True)
        pg = local_services.start_postgres(data_dir)
        cleanup.callback(pg.stop)
        rd = local_services.start_redis(data_dir)
        cleanup.callback(rd.stop)
        migrate.upgrade(pg.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_GATEWAY_ENV_PREFIXES)}
        env.update(
            DATABASE_URL=pg.url,
            REDIS_URL=rd.url,
            CMG_DATA_DIR=str(data_dir),
            OPENROUTER_BASE_URL=upstream,
            OPENROUTER_API_KEY="sk-mock",
            CMG_LOG_LEVEL="warning",
        )
        stack = Stack(data_dir, logs, pg.url, rd.url, env)
        try:
            yield stack
        finally:
            for service in reversed(stack.services):
                service.stop()


class Api:
    """The memory API over one keep-alive HTTP/1.1 connection (stdlib: no client in the way)."""

    def __init__(self, base_url: str, key: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self._conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.retries = 0  # 503s answered again (a search that then succeeds is still timed)

    def add_items(self, items: list[dict[str, Any]], *, wait: bool) -> tuple[int, dict[str, Any]]:
        path = "/v1/memory/items" + ("?wait=true" if wait else "")
        return self._call("POST", path, json.dumps({"items": items}).encode())

    def search(self, q: str, *, k: int, mode: str, user: str | None = None) -> list[dict[str, Any]]:
        params = {"q": q, "k": str(k), "mode": mode} | ({"user": user} if user else {})
        for attempt in range(3):
            status, body = self._call("GET", "/v1/memory/search?" + urlencode(params), None)
            if status != 503:
                break
            self.retries += 1
            time.sleep(0.2 * (attempt + 1))
        if status != 200:
            raise RuntimeError(f"search answered {status}: {body}")
        data: list[dict[str, Any]] = body["data"]
        return data

    def close(self) -> None:
        self._conn.close()

    def _call(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
        self._conn.request(method, path, body=body, headers=self._headers)
        response = self._conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")


def _worker_command_ready() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "worker", "--help"],
        cwd=ROOT, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode == 0


def new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
