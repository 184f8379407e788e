"""The gateway_fleet Terraform module: formatted, valid and planned, all offline.

terraform init takes hashicorp/null from the local filesystem mirror that
infra/ci/install-tools.sh lays out (TF_CLI_CONFIG_FILE); the CLI config has no `direct`
source, so nothing is fetched. Work happens on a copy of infra/ in a temporary directory:
the module reads the shared nginx template by relative path, and init writes .terraform/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .tooling import ROOT, Run, Tools

TF_DIR = ROOT / "infra" / "terraform"
MODULE = TF_DIR / "modules" / "gateway_fleet"
EXAMPLE = TF_DIR / "examples" / "basic"
NULL_VERSION = "2.1.2"


@pytest.fixture(scope="module")
def planned(tools: Tools, run: Run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """init + validate + plan of examples/basic; returns `terraform show -json` of the plan."""
    work = tmp_path_factory.mktemp("tf") / "infra"
    shutil.copytree(ROOT / "infra", work, ignore=shutil.ignore_patterns(".terraform*"))
    example = work / "terraform" / "examples" / "basic"
    terraform, env = tools.path("terraform"), tools.terraform_env()

    init = run(
        [terraform, "init", "-backend=false", "-input=false", "-no-color"], cwd=example, env=env
    )
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"Installed hashicorp/null v{NULL_VERSION}" in init.stdout
    lock = (example / ".terraform.lock.hcl").read_text()
    assert f'version     = "{NULL_VERSION}"' in lock

    validate = run([terraform, "validate", "-no-color"], cwd=example, env=env)
    assert validate.returncode == 0, validate.stdout + validate.stderr

    plan = run(
        [terraform, "plan", "-input=false", "-lock=false", "-no-color", "-out=plan.bin"],
        cwd=example,
        env=env,
    )
    assert plan.returncode == 0, plan.stdout + plan.stderr
    show = run([terraform, "show", "-json", "plan.bin"], cwd=example, env=env)
    assert show.returncode == 0, show.stderr
    parsed: dict[str, Any] = json.loads(show.stdout)
    return parsed


def test_terraform_fmt_is_clean(tools: Tools, run: Run) -> None:
    result = run(
        [tools.path("terraform"), "fmt", "-check", "-recursive", "-diff", "-no-color"],
        cwd=TF_DIR,
        env=tools.terraform_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_module_validates_on_its_own(tools: Tools, run: Run, tmp_path: Path) -> None:
    work = tmp_path / "infra"
    shutil.copytree(ROOT / "infra", work, ignore=shutil.ignore_patterns(".terraform*"))
    module = work / "terraform" / "modules" / "gateway_fleet"
    terraform, env = tools.path("terraform"), tools.terraform_env()
    init = run(
        [terraform, "init", "-backend=false", "-input=false", "-no-color"], cwd=module, env=env
    )
    assert init.returncode == 0, init.stdout + init.stderr
    validate = run([terraform, "validate", "-no-color"], cwd=module, env=env)
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_example_plans_two_hosts_with_two_replicas_each(planned: dict[str, Any]) -> None:
    outputs = planned["planned_values"]["outputs"]
    assert outputs["upstreams"]["value"] == [
        "10.0.0.10:8080",
        "10.0.0.10:8081",
        "10.0.0.11:8080",
        "10.0.0.11:8081",
    ]
    assert outputs["prometheus_targets"]["value"]["worker"] == ["10.0.0.10:9100", "10.0.0.11:9100"]
    resources = planned["planned_values"]["root_module"]["child_modules"][0]["resources"]
    assert sorted(r["address"].removeprefix("module.fleet.") for r in resources) == [
        'null_resource.activate["gw-a"]',
        'null_resource.activate["gw-b"]',
        'null_resource.install["gw-a"]',
        'null_resource.install["gw-b"]',
        "null_resource.migrate[0]",
    ]


def test_module_installs_the_same_nginx_config_the_tests_render(
    planned: dict[str, Any], nginx_render: ModuleType
) -> None:
    rendered = planned["planned_values"]["outputs"]["nginx_config"]["value"]
    expected = nginx_render.render(
        (ROOT / "infra" / "nginx" / "gateway.conf.tftpl").read_text(),
        upstreams=["10.0.0.10:8080", "10.0.0.10:8081", "10.0.0.11:8080", "10.0.0.11:8081"],
        listen_port=443,
        server_name="gw.example.com",
        tls_enabled=True,
        tls_cert_path="/etc/letsencrypt/live/gw.example.com/fullchain.pem",
        tls_key_path="/etc/letsencrypt/live/gw.example.com/privkey.pem",
        metrics_allow=["10.0.0.0/24"],
        admin_allow=["127.0.0.1/32", "::1/128"],
        max_body="8m",
    )
    assert rendered == expected


def test_example_pins_the_null_provider_ci_ships() -> None:
    main = (EXAMPLE / "main.tf").read_text()
    assert re.search(r'source\s+=\s+"hashicorp/null"\s+version\s+=\s+"2\.1\.2"', main)
    assert 'required_version = ">= 1.0.3"' in (MODULE / "versions.tf").read_text()


def test_secrets_are_referenced_never_passed_by_value() -> None:
    variables = (MODULE / "variables.tf").read_text()
    blocks = dict(re.findall(r'variable "(\w+)" \{(.*?)\n\}', variables, re.S))
    for name in ("ssh_private_key_path", "secrets_source_path"):
        assert "sensitive   = true" in blocks[name], f"{name} is not marked sensitive"
    for name in blocks:
        assert not re.search(r"(password|api_key|master_key|token|secret)$", name), (
            f"variable {name} looks like a secret value; pass a path or a name instead"
        )
    assert "DATABASE_URL" in blocks["required_secrets"]


def test_rendered_deploy_script_is_valid_shell(
    nginx_render: ModuleType, run: Run, tmp_path: Path
) -> None:
    text = (MODULE / "templates" / "deploy.sh.tftpl").read_text()
    for scheduler in (True, False):
        script = nginx_render.render(
            text,
            host_name="gw-a",
            private_ip="10.0.0.10",
            stage_dir="/tmp/cmg-deploy",
            venv_dir="/opt/cmg/venv",
            env_file="/etc/cmg/cmg.env",
            cmg_package="context-memory-gateway==0.1.0",
            pip_extra_args="",
            gateway_ports=[8080, 8081],
            worker_ports=[9100, 9101],
            run_scheduler=scheduler,
            secrets_env_file="/etc/cmg/secrets.env",
            upload_secrets=not scheduler,
            required_secrets=["DATABASE_URL", "REDIS_URL"],
            migrate_env_file="/etc/cmg/migrate.env",
        )
        path = tmp_path / "deploy.sh"
        path.write_text(script)
        result = run(["sh", "-n", str(path)])
        assert result.returncode == 0, result.stderr
        assert "systemctl restart cmg@8081.service" in script
        assert ('retire_others cmg "8080 8081 "') in script
        assert ("systemctl restart cmg-scheduler.service" in script) is scheduler
        assert ('install -m 0640 -o root -g cmg "$STAGE/secrets.env"' in script) is not scheduler


def test_units_run_each_role_as_the_cmg_user(nginx_render: ModuleType) -> None:
    variables = {
        "venv_dir": "/opt/cmg/venv",
        "env_file": "/etc/cmg/cmg.env",
        "secrets_env_file": "/etc/cmg/secrets.env",
    }
    for unit, command in (
        ("cmg@", "serve"),
        ("cmg-worker@", "worker"),
        ("cmg-scheduler", "scheduler"),
    ):
        text = (MODULE / "templates" / f"{unit}.service.tftpl").read_text()
        rendered = nginx_render.render(text, **variables)
        assert f"ExecStart=/opt/cmg/venv/bin/cmg {command}\n" in rendered
        assert "User=cmg\n" in rendered
        assert "EnvironmentFile=/etc/cmg/secrets.env\n" in rendered
        assert "${" not in rendered


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ("REDIS_URL=redis://:s3cret@redis.internal:6379/0", True),
        ("REDIS_URL=rediss://cmg:s3cret@redis.internal:6380/0", True),
        ('REDIS_URL="redis://:s3cret@redis.internal:6379/0"', True),
        ("REDIS_URL=redis://redis.internal:6379/0", False),
        ("REDIS_URL=redis://cmg@redis.internal:6379/0", False),
        ("REDIS_URL=redis://redis.internal:6379/0?x=a:b@c", False),
    ],
)
def test_deploy_refuses_a_redis_url_without_a_password(
    line: str, accepted: bool, tmp_path: Path
) -> None:
    """The install phase's own grep, run by sh on a secrets file holding ``line``."""
    script = (MODULE / "templates" / "deploy.sh.tftpl").read_text()
    check = re.search(r"grep -Eq (.+?) \"\$SECRETS\"", script)
    assert check is not None
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"DATABASE_URL=postgresql://x\n{line}\n")
    done = subprocess.run(
        ["sh", "-c", f'grep -Eq {check[1]} "$1"', "sh", str(secrets)], check=False
    )
    assert (done.returncode == 0) == accepted
