"""Session fixtures: real embedded PostgreSQL + Redis, a real mock upstream, real gateways.

The gateway under test is a separate ``python -m gateway serve`` process, so every request
crosses real sockets and the real client code; tests drive it with the official ``openai`` SDK.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import psutil
import psycopg
import pytest

from core.settings import Settings
from gateway.ops import local_services
from gateway.ops.local_services import in_transaction
from gateway.services import workspaces
from memory import migrate
from memory.db import run_transaction
from tests.mock_upstream import MockUpstream
from workers import catalog

# The job fixtures (a database and Redis of their own, real worker processes), for the worker
# tests and the CLI's job commands alike.
pytest_plugins = ["tests.jobs"]

ROOT = Path(__file__).resolve().parents[1]
MASTER_KEY = "cmgm_test_master_key"
UPSTREAM_KEY = "sk-upstream-test"
ALT_KEY = "sk-alt-provider"


@dataclass
class Services:
    database_url: str
    redis_url: str
    data_dir: Path


@dataclass
class Tenant:
    name: str
    key: str
    key_id: str


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("cmg-data")
    pg = local_services.start_postgres(data_dir)
    rd = local_services.start_redis(data_dir)
    migrate.upgrade(pg.url)
    try:
        yield Services(pg.url, rd.url, data_dir)
    finally:
        rd.stop()
        pg.stop()


@pytest.fixture(scope="session")
def mock() -> Iterator[MockUpstream]:
    upstream = MockUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


def providers_file(path: Path, mock: MockUpstream) -> Path:
    dead = local_services.free_port()
    path.write_text(
        f"""
[[provider]]
name = "alt"
base_url = "{mock.base_url}"
api_key_env = "ALT_KEY"
prefix = "alt/"
catalog = false
retries = 1

[[provider]]
name = "native"
base_url = "{mock.base_url}"
api_key_env = "ALT_KEY"
prefix = "native/"
catalog = false
retries = 1
responses = "native"
messages = "native"

[[provider]]
name = "dead"
base_url = "http://127.0.0.1:{dead}/v1"
prefix = "dead/"
catalog = false
retries = 1

[alias]
fast = "mock/gpt"

[fallback]
"alt/flaky" = ["alt/backup"]
"dead/model" = ["mock/gpt"]
"native/mixed" = ["mock/gpt"]
"""
    )
    return path


@contextlib.contextmanager
def own_database(services: Services) -> Iterator[str]:
    """A migrated database of its own in the session's PostgreSQL (its URL), dropped after.

    The outbox is per database: any gateway's relay pushes every pending row of its database to
    its own Redis. A test with its own Redis needs its own database too, or the session
    gateway may push that test's jobs to a Redis no worker of the test listens on.
    """
    name = f"cmg_{uuid.uuid4().hex[:10]}"
    admin = services.database_url.replace("/cmg?", "/postgres?", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = services.database_url.replace("/cmg?", f"/{name}?", 1)
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextlib.contextmanager
def own_services(services: Services, redis_url: str | None = None) -> Iterator[Services]:
    """The session's services with a database of their own (``own_database``) and, when given,
    a Redis of their own: a gateway with its own Redis needs its own outbox too."""
    with own_database(services) as url:
        yield Services(url, redis_url or services.redis_url, services.data_dir)


def clean_env() -> dict[str, str]:
    """This process's environment without any gateway setting: a child sees only the test's."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CMG_", "OPENROUTER_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }


def stop_group(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM a child started with ``start_new_session=True`` and its children; SIGKILL them if
    they outlive ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def gateway_env(
    services: Services, mock: MockUpstream, providers: Path, **extra: str
) -> dict[str, str]:
    env = clean_env()
    env.update(
        DATABASE_URL=services.database_url,
        REDIS_URL=services.redis_url,
        CMG_DATA_DIR=str(services.data_dir),
        CMG_MASTER_KEY=MASTER_KEY,
        OPENROUTER_BASE_URL=mock.base_url,
        OPENROUTER_API_KEY=UPSTREAM_KEY,
        ALT_KEY=ALT_KEY,
        CMG_PROVIDERS=str(providers),
        CMG_RETRY_BASE_DELAY="0.01",
        CMG_RETRY_MAX_DELAY="2",
        CMG_UPSTREAM_TIMEOUT="2",
        CMG_AUTH_CACHE_SECONDS="1",
        CMG_CATALOG_REFRESH_SECONDS="1",
        CMG_USAGE_FLUSH_SECONDS="0.2",
        CMG_OUTBOX_INTERVAL_SECONDS="1",
    )
    env.update(extra)
    return env


class Gateway:
    """A real ``cmg serve`` process on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = local_services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log_path = log
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    def client(self, key: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kwargs)

    def stop(self) -> None:
        stop_group(self.proc, timeout=15)
        self._log.close()


@pytest.fixture(scope="session")
def providers(tmp_path_factory: pytest.TempPathFactory, mock: MockUpstream) -> Path:
    return providers_file(tmp_path_factory.mktemp("conf") / "providers.toml", mock)


@pytest.fixture(scope="session")
def gateway(
    services: Services,
    mock: MockUpstream,
    providers: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    env = gateway_env(services, mock, providers)
    settings = Settings.from_env(env)
    in_transaction(settings, catalog.sync_once, settings)
    gw = Gateway(env, tmp_path_factory.mktemp("logs") / "gateway.log")
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def worker(
    gateway: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """A real RQ worker process (all queues) beside the session gateway."""
    log = (tmp_path_factory.mktemp("logs") / "worker.log").open("wb")
    metrics_port = local_services.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "worker"],
        env={**gateway.env, "CMG_METRICS_PORT": str(metrics_port)},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.metrics_port = metrics_port  # type: ignore[attr-defined]
    try:
        _wait_worker_ready(proc, metrics_port, gateway.env["REDIS_URL"])
        yield proc
    finally:
        stop_group(proc)
        log.close()


def _wait_worker_ready(proc: subprocess.Popen[bytes], metrics_port: int, redis_url: str) -> None:
    """Block until the worker serves its metrics (embedder loaded) and has drained the backlog.

    Tests that ran before the worker started left embed jobs queued; a test that waits for its
    own item must not depend on how fast a cold worker on a slow machine works through them.
    """
    from redis import Redis
    from rq import Queue

    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with Redis.from_url(redis_url) as redis:
        queues = [Queue(name, connection=redis) for name in ("embed", "summarize")]
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the worker process exited during startup"
            try:
                up = httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                up = False
            if up and all(q.count == 0 for q in queues):
                return
            time.sleep(0.2)
    raise AssertionError("the worker did not become ready with an empty backlog in 120 s")


def run_db(services: Services, work: Any) -> Any:
    return run_transaction(services.database_url, work)


def make_tenant(services: Services, expires_in_days: float | None = None) -> Tenant:
    name = f"ws-{uuid.uuid4().hex[:10]}"

    async def work(session: Any) -> tuple[str, workspaces.KeyInfo]:
        await workspaces.create_workspace(session, name)
        return await workspaces.create_key(session, name, expires_in_days=expires_in_days)

    secret, info = run_db(services, work)
    return Tenant(name, secret, info.id)


def new_workspace_id(services: Services) -> str:
    """A fresh workspace's id, for tests that write its rows directly."""
    name = make_tenant(services).name
    with psycopg.connect(services.database_url) as conn:
        row = conn.execute("SELECT id FROM workspaces WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def tenant(services: Services) -> Tenant:
    return make_tenant(services)


@pytest.fixture
def client(gateway: Gateway, tenant: Tenant) -> Iterator[openai.OpenAI]:
    with gateway.client(tenant.key) as c:
        yield c


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        yield c


def usage_rows(
    http: httpx.Client, tenant: Tenant, requests: int, *, group_by: str | None = "key,model",
    timeout: float = 10.0,
) -> list[dict[str, Any]]:  # fmt: skip
    """``/v1/usage`` rows once they count ``requests`` or more: usage is written in batches."""
    deadline = time.monotonic() + timeout
    params = {"group_by": group_by} if group_by else {}
    while True:
        response = http.get(
            "/v1/usage", params=params, headers={"Authorization": f"Bearer {tenant.key}"}
        )
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        if sum(r["requests"] for r in data) >= requests:
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.2)


@pytest.fixture
def unique() -> str:
    """A fresh model-name suffix so scripted mock replies never leak between tests."""
    return uuid.uuid4().hex[:8]


def leftovers(base: Path, grace: float = 10.0) -> list[psutil.Process]:
    """This session's processes still alive: children of pytest, and any PostgreSQL or
    redis-server working in the session's temp dirs (both detach from their starter). A process
    on its way out gets ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        found = list({p.pid: p for p in _alive_children() + services_under(base)}.values())
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _alive_children() -> list[psutil.Process]:
    alive = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def services_under(base: Path) -> list[psutil.Process]:
    """Postmasters and redis-servers whose working directory is under ``base`` (a postmaster's
    backends are its business: only processes whose parent is not one of them are named)."""
    found = {}
    for proc in psutil.process_iter(["name", "ppid"]):
        if proc.info["name"] not in ("postgres", "redis-server"):
            continue
        with contextlib.suppress(psutil.Error):
            if Path(proc.cwd()).is_relative_to(base):
                found[proc.pid] = proc
    return [p for p in found.values() if p.info["ppid"] not in found]


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline()).strip()[:200]} (cwd {proc.cwd()})"
    except psutil.Error:
        return f"pid {proc.pid}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Nothing a test started outlives the run: anything left fails it, named (then stopped)."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    base = factory.getbasetemp() if factory is not None else None
    left = leftovers(base.resolve()) if base is not None else _alive_children()
    if not left:
        return
    names = "\n".join(f"  {_describe(proc)}" for proc in left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"processes of this test run still alive at its end:\n{names}"
    if reporter is not None:
        reporter.write_sep("=", "left running", red=True)
        reporter.write_line(message, red=True)
    else:
        print(message, file=sys.stderr)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


__all__ = ["Gateway", "Services", "Tenant", "dataclasses"]
