"""The embedded PostgreSQL is sized for the box, and runs with what it was sized to; ``cmg serve``
stops the embedded services it started, and leaves alone those another live process started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import psycopg
import pytest

from gateway.ops import local_services
from tests.conftest import ROOT, Services, clean_env, services_under, stop_group
from tests.mock_upstream import MockUpstream

GB = 1 << 30


def test_shared_buffers_are_a_quarter_of_memory_between_128mb_and_2gb() -> None:
    assert local_services.server_settings(memory=4 * GB)["shared_buffers"] == "1024MB"
    assert local_services.server_settings(memory=64 * GB)["shared_buffers"] == "2048MB"
    assert local_services.server_settings(memory=GB // 4)["shared_buffers"] == "128MB"
    assert local_services.server_settings("512MB", memory=64 * GB)["shared_buffers"] == "512MB"


def test_the_embedded_server_runs_with_its_settings(services: Services) -> None:
    wanted = local_services.server_settings()
    with psycopg.connect(services.database_url) as conn:
        for name, value in wanted.items():
            same = conn.execute(
                "SELECT pg_size_bytes(current_setting(%s)) = pg_size_bytes(%s)", (name, value)
            ).fetchone()
            assert same == (True,), name


def _serve(data_dir: Path, mock: MockUpstream, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``cmg serve`` with no DATABASE_URL / REDIS_URL: embedded services in ``data_dir``."""
    port = local_services.free_port()
    env = {**clean_env(), "CMG_DATA_DIR": str(data_dir), "OPENROUTER_BASE_URL": mock.base_url,
           "OPENROUTER_API_KEY": "sk-test", "CMG_LOG_LEVEL": "info"}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not _answers(url + "/healthz"):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "cmg serve did not start"
        time.sleep(0.2)
    return proc, url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def _names(data_dir: Path) -> set[str]:
    return {proc.name() for proc in services_under(data_dir.resolve())}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cmg_serve_stops_the_embedded_services_it_started(
    tmp_path: Path, mock: MockUpstream, sig: signal.Signals
) -> None:
    data_dir = tmp_path / "data"
    proc, url = _serve(data_dir, mock, tmp_path / "serve.log")
    try:
        assert _names(data_dir) == {"postgres", "redis-server"}
        cli = subprocess.run(  # a second cmg on the same data dir adopts them, then exits
            [sys.executable, "-m", "gateway", "workspace", "list"],
            env={**clean_env(), "CMG_DATA_DIR": str(data_dir)}, cwd=ROOT,
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert _names(data_dir) == {"postgres", "redis-server"}  # left to their starter
        assert _answers(url + "/readyz")
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0  # a requested stop is a clean exit
    finally:
        stop_group(proc)
    assert leftovers_gone(data_dir), _names(data_dir)
    assert "embedded PostgreSQL stopped" in (tmp_path / "serve.log").read_text()


def leftovers_gone(data_dir: Path, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _names(data_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
