"""Where the infra tools live, and the helpers the infra tests share."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "infra" / "ci" / "install-tools.sh"
INFRA_VENV = Path(os.environ.get("CMG_INFRA_VENV", ROOT / ".venv-infra"))
TERRAFORMRC = INFRA_VENV / "terraform" / "terraformrc"
TOOL_NAMES = ("nginx", "openssl", "promtool", "hadolint", "docker-compose", "terraform")

Run = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Tools:
    """Paths of the real tools; `path(name)` fails the calling test if one is missing."""

    found: dict[str, str]
    install_log: str = ""

    def path(self, name: str) -> str:
        if name not in self.found:
            pytest.fail(
                f"{name} is not installed: run infra/ci/install-tools.sh "
                f"(as root; it installs every infra tool).\n{self.install_log}",
                pytrace=False,
            )
        return self.found[name]

    def terraform_env(self) -> dict[str, str]:
        """Environment for an offline terraform: providers only from the local mirror."""
        self.path("terraform")
        if not TERRAFORMRC.is_file():
            pytest.fail(f"{TERRAFORMRC} is missing: run infra/ci/install-tools.sh", pytrace=False)
        return {
            **os.environ,
            "TF_CLI_CONFIG_FILE": str(TERRAFORMRC),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
        }


def find_tools() -> dict[str, str]:
    search = os.pathsep.join(
        [str(INFRA_VENV / "bin"), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]
    )
    found = {}
    for name in TOOL_NAMES:
        path = shutil.which(name, path=search)
        if path:
            found[name] = path
    if not TERRAFORMRC.is_file():
        found.pop("terraform", None)  # a terraform without the offline mirror cannot init
    return found
