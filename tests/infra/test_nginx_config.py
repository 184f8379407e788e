"""The nginx edge: one template, rendered alike by Terraform and render.py, accepted by nginx -t.

`nginx -t` runs the real Debian nginx against the wrapper infra/nginx/nginx.conf in a
temporary prefix, so no root paths are touched.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .tooling import ROOT, Run, Tools

TEMPLATE = ROOT / "infra" / "nginx" / "gateway.conf.tftpl"
MODULE_TEMPLATES = ROOT / "infra" / "terraform" / "modules" / "gateway_fleet" / "templates"

PLAIN: dict[str, Any] = {
    "upstreams": ["127.0.0.1:18080", "127.0.0.1:18081"],
    "listen_port": 18088,
    "server_name": "localhost",
    "tls_enabled": False,
    "tls_cert_path": "",
    "tls_key_path": "",
    "metrics_allow": [],
    "admin_allow": ["127.0.0.1", "::1", "10.0.0.0/8"],
    "max_body": "8m",
}


def _with_tls(tmp: Path) -> dict[str, Any]:
    return {
        **PLAIN,
        "listen_port": 18443,
        "server_name": "gw.example.com",
        "tls_enabled": True,
        "tls_cert_path": str(tmp / "tls" / "cert.pem"),
        "tls_key_path": str(tmp / "tls" / "key.pem"),
        "metrics_allow": ["10.0.0.0/8", "127.0.0.1/32"],
    }


def _block(conf: str, header: str) -> str:
    """The text of the `{ ... }` block that follows `header`."""
    start = conf.index(header)
    depth = 0
    for pos in range(conf.index("{", start), len(conf)):
        depth += {"{": 1, "}": -1}.get(conf[pos], 0)
        if depth == 0:
            return conf[start : pos + 1]
    raise AssertionError(f"unclosed block {header!r}")


def _directives(block: str) -> list[str]:
    lines = (line.split("#")[0].strip() for line in block.splitlines())
    return [line.rstrip(";") for line in lines if line.endswith(";")]


def _prefix(tmp: Path, conf: str) -> Path:
    """A throw-away nginx prefix: wrapper nginx.conf, conf.d/gateway.conf, logs/."""
    prefix = tmp / "nginx"
    (prefix / "conf.d").mkdir(parents=True)
    (prefix / "logs").mkdir()
    shutil.copy(ROOT / "infra" / "nginx" / "nginx.conf", prefix / "nginx.conf")
    (prefix / "conf.d" / "gateway.conf").write_text(conf)
    return prefix


def _nginx_t(tools: Tools, run: Run, prefix: Path, wrap: list[str] | None = None) -> str:
    nginx = tools.path("nginx")
    cmd = [nginx, "-e", "stderr", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-t"]
    result = run((wrap or []) + cmd)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    return result.stderr


def _self_signed(tools: Tools, run: Run, tmp: Path) -> None:
    (tmp / "tls").mkdir()
    result = run(
        [
            tools.path("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=gw.example.com",
            "-keyout",
            str(tmp / "tls" / "key.pem"),
            "-out",
            str(tmp / "tls" / "cert.pem"),
        ]
    )
    assert result.returncode == 0, result.stderr


def test_plain_http_config_passes_nginx_t(
    tools: Tools, run: Run, nginx_render: ModuleType, tmp_path: Path
) -> None:
    conf = nginx_render.render(TEMPLATE.read_text(), **PLAIN)
    _nginx_t(tools, run, _prefix(tmp_path, conf))


def test_tls_config_passes_nginx_t(
    tools: Tools, run: Run, nginx_render: ModuleType, tmp_path: Path
) -> None:
    _self_signed(tools, run, tmp_path)
    conf = nginx_render.render(TEMPLATE.read_text(), **_with_tls(tmp_path))
    assert "listen 18443 ssl http2;" in conf
    assert f"ssl_certificate {tmp_path}/tls/cert.pem;" in conf
    _nginx_t(tools, run, _prefix(tmp_path, conf))


def test_committed_compose_conf_is_up_to_date(nginx_render: ModuleType) -> None:
    committed = (ROOT / "infra" / "nginx" / "compose.conf").read_text()
    assert committed == nginx_render.render_compose(), (
        "infra/nginx/compose.conf is stale: run python infra/nginx/render.py"
    )


def test_compose_conf_passes_nginx_t(tools: Tools, run: Run, tmp_path: Path) -> None:
    # nginx resolves upstream names at load time: give the compose service names an address
    # in a private mount namespace (/etc/hosts bind-mounted), as Docker's DNS would.
    conf = (ROOT / "infra" / "nginx" / "compose.conf").read_text()
    names = sorted({u.split(":")[0] for u in re.findall(r"server (\S+:\d+)", conf)})
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost {' '.join(names)}\n")
    prefix = _prefix(tmp_path, conf)
    unshare = shutil.which("unshare") or "unshare"
    userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    script = f'mount --bind "{hosts}" /etc/hosts && exec "$@"'
    _nginx_t(tools, run, prefix, [unshare, *userns, "--mount", "sh", "-c", script, "sh"])


def test_upstream_pool_lists_every_replica_with_keepalive(nginx_render: ModuleType) -> None:
    conf = nginx_render.render(TEMPLATE.read_text(), **PLAIN)
    upstream = _directives(_block(conf, "upstream cmg_gateways"))
    servers = [d.split()[1] for d in upstream if d.startswith("server ")]
    assert servers == PLAIN["upstreams"]
    assert any(d.startswith("keepalive ") for d in upstream)
    server = _directives(_block(conf, "server {"))
    assert "proxy_http_version 1.1" in server
    assert 'proxy_set_header Connection ""' in server


def test_chat_completions_stream_unbuffered_with_long_timeouts(nginx_render: ModuleType) -> None:
    conf = nginx_render.render(TEMPLATE.read_text(), **PLAIN)
    chat = _directives(_block(conf, "location = /v1/chat/completions"))
    assert "proxy_buffering off" in chat
    assert "proxy_pass http://cmg_gateways" in chat
    read_timeout = next(d for d in chat if d.startswith("proxy_read_timeout "))
    assert int(read_timeout.split()[1].rstrip("s")) >= 300
    # X-Accel-Buffering from the gateway must stay honoured everywhere.
    assert "proxy_ignore_headers" not in conf


def test_body_limit_request_id_and_client_ip_are_forwarded(nginx_render: ModuleType) -> None:
    conf = nginx_render.render(TEMPLATE.read_text(), **PLAIN)
    server = _directives(_block(conf, "server {"))
    assert "client_max_body_size 8m" in server
    assert "proxy_set_header X-Request-Id $cmg_request_id" in server
    assert "proxy_set_header X-Real-IP $remote_addr" in server
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for" in server
    request_id = _block(conf, "map $http_x_request_id $cmg_request_id")
    assert "default $request_id;" in request_id
    assert re.search(r"^limit_req_zone \$binary_remote_addr zone=cmg_edge:", conf, re.M)
    assert "limit_req zone=cmg_edge" in conf


def test_metrics_are_closed_unless_networks_are_listed(
    nginx_render: ModuleType, tmp_path: Path
) -> None:
    closed = _directives(_block(nginx_render.render(TEMPLATE.read_text(), **PLAIN), "= /metrics"))
    assert [d for d in closed if d.split()[0] in ("allow", "deny")] == ["deny all"]
    listed = nginx_render.render(TEMPLATE.read_text(), **_with_tls(tmp_path))
    rules = [
        d for d in _directives(_block(listed, "= /metrics")) if d.split()[0] in ("allow", "deny")
    ]
    assert rules == ["allow 10.0.0.0/8", "allow 127.0.0.1/32", "deny all"]


def test_admin_answers_only_the_allow_list(nginx_render: ModuleType) -> None:
    conf = nginx_render.render(TEMPLATE.read_text(), **PLAIN)
    admin = _directives(_block(conf, "^~ /admin"))
    rules = [d for d in admin if d.split()[0] in ("allow", "deny")]
    assert rules == ["allow 127.0.0.1", "allow ::1", "allow 10.0.0.0/8", "deny all"]
    assert "proxy_pass http://cmg_gateways" in admin
    nobody = nginx_render.render(TEMPLATE.read_text(), **{**PLAIN, "admin_allow": []})
    assert [d for d in _directives(_block(nobody, "^~ /admin")) if "allow" in d] == []
    compose = (ROOT / "infra" / "nginx" / "compose.conf").read_text()
    allowed = re.findall(r"allow (\S+);", _block(compose, "^~ /admin"))
    assert allowed and all(ipaddress.ip_network(a).is_private for a in allowed)


def test_tls_block_appears_only_when_enabled(nginx_render: ModuleType, tmp_path: Path) -> None:
    plain = nginx_render.render(TEMPLATE.read_text(), **PLAIN)
    assert "ssl_certificate" not in plain and "listen 18088;" in plain
    tls = nginx_render.render(TEMPLATE.read_text(), **_with_tls(tmp_path))
    assert "Strict-Transport-Security" in tls


def test_render_requires_every_variable_like_templatefile(nginx_render: ModuleType) -> None:
    partial = {k: v for k, v in PLAIN.items() if k != "tls_key_path"}
    with pytest.raises(nginx_render.TemplateError, match="tls_key_path"):
        nginx_render.render(TEMPLATE.read_text(), **partial)
    with pytest.raises(nginx_render.TemplateError, match="bool"):
        nginx_render.render(TEMPLATE.read_text(), **{**PLAIN, "tls_enabled": "yes"})


# Whitespace cases where HCL's strip markers are easy to get wrong.
STRIP_CASES = [
    ("A\n\n  \t %{~ if t }|  \t\n\n  B\n%{ endif }", {"t": True}),
    ("|A\n\n  \t %{ if t ~}  \t\n\n  B\n%{ endif }", {"t": True}),
    ("A\n\n\n%{~ if t ~}\n\n\nB%{ endif }", {"t": True}),
    ("A  \n%{~ if t}B%{ endif }|%{ if t ~}  x  \ny%{ endif }", {"t": True}),
    ("|x\n  %{~ if t ~}\n  \n  z\n%{ endif }", {"t": True}),
    ("%{ for x in xs ~}\n  - ${x}\n%{ endfor ~}\nend $${literal} %%{ also }\n", {"xs": ["a", "b"]}),
    ("%{ if !t ~}\nno\n%{ else ~}\nyes ${n}\n%{ endif ~}\n", {"t": True, "n": 3}),
]


def _sample_vars() -> list[tuple[str, dict[str, Any]]]:
    """(template path, variables) for every template the repo renders with templatefile."""
    deploy = {
        "host_name": "gw-a",
        "private_ip": "10.0.0.10",
        "stage_dir": "/tmp/cmg-deploy",
        "venv_dir": "/opt/cmg/venv",
        "env_file": "/etc/cmg/cmg.env",
        "cmg_package": "context-memory-gateway==0.1.0",
        "pip_extra_args": "",
        "gateway_ports": [8080, 8081],
        "worker_ports": [9100],
        "run_scheduler": True,
        "secrets_env_file": "/etc/cmg/secrets.env",
        "upload_secrets": False,
        "required_secrets": ["DATABASE_URL", "REDIS_URL"],
        "migrate_env_file": "/etc/cmg/migrate.env",
    }
    unit = {
        "venv_dir": "/opt/cmg/venv",
        "env_file": "/etc/cmg/cmg.env",
        "secrets_env_file": "/etc/cmg/secrets.env",
    }
    env = {
        "private_ip": "10.0.0.10",
        "uvicorn_workers": 2,
        "max_body_bytes": 8388608,
        "log_level": "INFO",
        "openrouter_base_url": "https://openrouter.ai/api/v1",
        "providers_file": "/etc/cmg/providers.toml",
        "has_providers_file": True,
    }
    cases = [(str(TEMPLATE), PLAIN), (str(TEMPLATE), _with_tls(Path("/srv")))]
    cases.append((str(MODULE_TEMPLATES / "deploy.sh.tftpl"), deploy))
    cases.append(
        (
            str(MODULE_TEMPLATES / "deploy.sh.tftpl"),
            {**deploy, "run_scheduler": False, "upload_secrets": True},
        )
    )
    cases.append((str(MODULE_TEMPLATES / "cmg.env.tftpl"), env))
    cases.append((str(MODULE_TEMPLATES / "cmg.env.tftpl"), {**env, "has_providers_file": False}))
    for name in ("cmg@.service.tftpl", "cmg-worker@.service.tftpl", "cmg-scheduler.service.tftpl"):
        cases.append((str(MODULE_TEMPLATES / name), unit))
    return cases


def test_python_render_is_identical_to_terraform_templatefile(
    tools: Tools, run: Run, nginx_render: ModuleType, tmp_path: Path
) -> None:
    """`terraform console` evaluates templatefile() offline: both renders match byte for byte."""
    cases = [(p, v) for p, v in _sample_vars()]
    for n, (text, variables) in enumerate(STRIP_CASES):
        path = tmp_path / f"strip{n}.tftpl"
        path.write_text(text)
        cases.append((str(path), variables))
    # One expression (console prints only the last result when stdin is not a terminal).
    # JSON is valid HCL for these values; base64 keeps the bytes exact.
    calls = [f"base64encode(templatefile({json.dumps(p)}, {json.dumps(v)}))" for p, v in cases]
    expression = f"jsonencode([{', '.join(calls)}])\n"
    result = run(
        [tools.path("terraform"), "console"],
        input=expression,
        cwd=tmp_path,
        env=tools.terraform_env(),
    )
    assert result.returncode == 0, result.stderr
    outputs = json.loads(json.loads(result.stdout))
    assert len(outputs) == len(cases), result.stdout
    for (path, variables), encoded in zip(cases, outputs, strict=True):
        by_terraform = base64.b64decode(encoded).decode()
        by_python = nginx_render.render(Path(path).read_text(), **variables)
        assert by_python == by_terraform, path
