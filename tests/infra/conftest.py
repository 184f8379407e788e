"""Fixtures for the deployment checks: the real tools, found or installed once per session.

Tools are looked up in .venv-infra/bin first, then on PATH (plus /usr/sbin for nginx). When
one is missing, infra/ci/install-tools.sh runs once for the session (that is how CI gets
them; CMG_INFRA_AUTO_INSTALL=0 turns it off). A tool still missing makes each test that
needs it fail, never skip.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .tooling import INSTALL_SCRIPT, ROOT, TOOL_NAMES, Run, Tools, find_tools

INSTALL_TIMEOUT = 900


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The first test here may wait for install-tools.sh (about a minute on a cold machine):
    # more than the suite's per-test timeout allows.
    if not config.pluginmanager.hasplugin("timeout"):
        return
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.timeout(INSTALL_TIMEOUT + 60))


@pytest.fixture(scope="session")
def tools() -> Tools:
    found = find_tools()
    if set(found) == set(TOOL_NAMES):
        return Tools(found)
    if os.environ.get("CMG_INFRA_AUTO_INSTALL", "1") == "0":
        return Tools(found, "CMG_INFRA_AUTO_INSTALL=0: not installing automatically.")
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    log = f"install-tools.sh exited {result.returncode}:\n{result.stderr[-4000:]}"
    return Tools(find_tools(), log)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def nginx_render() -> ModuleType:
    """infra/nginx/render.py, imported from its path (infra/ is not a package)."""
    path = ROOT / "infra" / "nginx" / "render.py"
    spec = importlib.util.spec_from_file_location("cmg_nginx_render", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def run() -> Run:
    """subprocess.run with text output and a timeout; the test checks the exit code."""

    def _run(
        args: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            cwd=cwd,
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return _run
