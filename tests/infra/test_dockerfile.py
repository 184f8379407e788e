"""The Dockerfile: hadolint-clean, multi-stage, non-root, health-checked, one image for all roles.

No Docker engine here, so the image is never built: the checks are hadolint plus a reading
of the instructions of the final stage.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

from .tooling import Run, Tools


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for line in logical:
        word, _, rest = line.partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(dockerfile):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="module")
def dockerfile(repo_root: Path) -> Path:
    return repo_root / "Dockerfile"


def test_hadolint_reports_no_warnings(tools: Tools, run: Run, dockerfile: Path) -> None:
    hadolint = tools.path("hadolint")
    result = run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        cwd=dockerfile.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_is_multi_stage_on_python_311_slim(dockerfile: Path) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2
    for stage in stages:
        assert re.match(r"python:3\.11-slim\b", stage[0][1]), stage[0]
    final = stages[-1]
    assert any(i == "COPY" and args.startswith("--from=") for i, args in final)


def test_final_stage_installs_no_build_tools(dockerfile: Path) -> None:
    final = " ".join(args for _, args in _stages(dockerfile)[-1])
    for tool in ("build-essential", "gcc", "g++", "make ", "-dev ", "apt-get install"):
        assert tool not in final, f"{tool!r} in the final stage"


def test_final_stage_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = [args for i, args in _stages(dockerfile)[-1] if i == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_healthcheck_probes_healthz_without_curl(dockerfile: Path) -> None:
    checks = [args for i, args in _stages(dockerfile)[-1] if i == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert "urllib" in checks[0] and "curl" not in checks[0]


def test_one_image_serves_every_role(dockerfile: Path) -> None:
    final = dict(_stages(dockerfile)[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["cmg"]
    assert json.loads(final["CMD"]) == ["serve"]
    assert "CMG_HOST=0.0.0.0" in final["ENV"]


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatch(p, glob) or fnmatch.fnmatch(p, f"**/{glob}") for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_build_copies(repo_root: Path, dockerfile: Path) -> None:
    patterns = [
        line.strip()
        for line in (repo_root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for instruction, args in _instructions(dockerfile):
        if instruction == "COPY" and not args.startswith("--from="):
            copied += args.split()[:-1]
    assert copied
    for source in copied:
        assert not _dockerignore_excludes(patterns, source.rstrip("/")), source
    for private in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        ".venv-infra/bin/terraform",
        "tests/conftest.py",
        "gateway/__pycache__/app.cpython-311.pyc",
    ):
        assert _dockerignore_excludes(patterns, private), f"{private} would reach the image"
