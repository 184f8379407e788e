"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium.

When the browser is missing and this runs as root (CI, a fresh Debian machine), it is installed
from Debian's archive first, as the infra tools are; elsewhere the tests fail saying how to get
it. JavaScript is off in the browser: the console must work without it. Screenshots go to
``test-artifacts/console/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts" / "console"
_PACKAGES = ("chromium", "chromium-driver")


def _binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def _install() -> str:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get: install Debian's chromium and chromium-driver"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", *_PACKAGES], env=env,
                          capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    if done.returncode != 0:  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600,
                       check=False)  # fmt: skip
        done = subprocess.run(["apt-get", "install", "-y", "-q", *_PACKAGES], env=env,
                              capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    return done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = _binaries()
    log = ""
    if chromium is None or driver is None:
        log = _install()
        chromium, driver = _binaries()
    if chromium is None or driver is None:
        pytest.fail(f"Debian's chromium and chromium-driver are needed: {log}", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2}
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def shot(chrome: webdriver.Chrome, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    chrome.save_screenshot(str(path))
    return path
