"""Real nginx on loopback, rendered from the production template, in front of two real gateways.

A stream arrives through nginx incrementally, a killed replica does not fail requests, a too
large body gets 413 at the edge, /metrics is not public and /admin answers its allow-list only.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx2 as httpx
import openai
import pytest

from gateway.ops import local_services
from tests.conftest import MASTER_KEY, Gateway, Services, Tenant, gateway_env
from tests.mock_upstream import MockUpstream, Reply

from .tooling import ROOT, Tools


class Edge:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, prefix: Path) -> None:
        self.proc, self.port, self.prefix = proc, port, prefix
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def fleet(
    services: Services,
    mock: MockUpstream,
    providers: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Gateway]]:
    env = gateway_env(services, mock, providers)
    logs = tmp_path_factory.mktemp("fleet")
    replicas = [Gateway(env, logs / f"gw{i}.log") for i in range(2)]
    try:
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


@pytest.fixture(scope="module")
def edge(
    tools: Tools,
    nginx_render: ModuleType,
    fleet: list[Gateway],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Edge]:
    prefix = tmp_path_factory.mktemp("edge") / "nginx"
    (prefix / "conf.d").mkdir(parents=True)
    (prefix / "logs").mkdir()
    (prefix / "nginx.conf").write_text((ROOT / "infra/nginx/nginx.conf").read_text())
    port = local_services.free_port()
    template = (ROOT / "infra/nginx/gateway.conf.tftpl").read_text()
    (prefix / "conf.d/gateway.conf").write_text(
        nginx_render.render(
            template,
            upstreams=[f"127.0.0.1:{g.port}" for g in fleet],
            listen_port=port,
            server_name="localhost",
            tls_enabled=False,
            tls_cert_path="",
            tls_key_path="",
            metrics_allow=[],
            admin_allow=["192.0.2.1"],  # not this test's loopback client
            max_body="1m",
        )
    )
    proc = subprocess.Popen(
        [tools.path("nginx"), "-e", "stderr", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
         "-g", "daemon off; user root;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    try:
        yield Edge(proc, port, prefix)
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_stream_arrives_through_nginx_incrementally(
    edge: Edge, tenant: Tenant, mock: MockUpstream, unique: str
) -> None:
    mock.script(unique, Reply.slow_stream(8, 0.25))
    with openai.OpenAI(base_url=edge.url + "/v1", api_key=tenant.key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=f"alt/{unique}", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers={"X-Memory": "off"},
        )  # fmt: skip
        arrivals = []
        for _chunk in stream:
            arrivals.append(time.monotonic())
            if len(arrivals) == 1:
                assert not mock.requests_for(unique)[0].completed  # nginx did not buffer
        assert len(arrivals) >= 8
    assert arrivals[-1] - arrivals[0] >= 1.0  # spread out, not delivered in one burst


def test_edge_rejects_large_bodies_and_hides_metrics(edge: Edge, tenant: Tenant) -> None:
    big = (
        b'{"model": "mock/gpt", "messages": [{"role": "user", "content": "'
        + b"a" * (2 << 20)
        + b'"}]}'
    )
    response = httpx.post(
        edge.url + "/v1/chat/completions", content=big,
        headers={"Authorization": f"Bearer {tenant.key}", "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 413
    assert httpx.get(edge.url + "/metrics").status_code in (403, 404)
    echoed = httpx.get(edge.url + "/healthz", headers={"X-Request-Id": "edge-test-1"})
    assert echoed.headers["x-request-id"] == "edge-test-1"
    generated = httpx.get(edge.url + "/healthz").headers["x-request-id"]
    assert len(generated) == 32
    console = httpx.get(edge.url + "/ui/login")  # the console goes through the edge as is
    assert console.status_code == 200 and "frame-ancestors 'none'" in console.headers[
        "content-security-policy"]  # fmt: skip


def test_edge_keeps_admin_to_its_allow_list(edge: Edge, fleet: list[Gateway]) -> None:
    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    assert httpx.get(fleet[0].url + "/admin/workspaces", headers=master).status_code == 200
    assert httpx.get(edge.url + "/admin/workspaces", headers=master).status_code == 403
    assert httpx.get(edge.url + "/admin", headers=master).status_code == 403
    assert httpx.get(edge.url + "/v1/models", headers=master).status_code == 401  # rest passes


def test_requests_survive_a_killed_replica(
    edge: Edge, fleet: list[Gateway], tenant: Tenant
) -> None:
    """Last in this module: it kills a replica of the module's fleet."""
    with openai.OpenAI(base_url=edge.url + "/v1", api_key=tenant.key, max_retries=0) as client:
        fleet[0].proc.send_signal(signal.SIGKILL)
        fleet[0].proc.wait()
        for _ in range(10):
            answer = client.chat.completions.create(
                model="mock/gpt", messages=[{"role": "user", "content": "still there?"}],
                extra_headers={"X-Memory": "off"},
            )  # fmt: skip
            assert answer.choices[0].message.content == "echo: still there?"
