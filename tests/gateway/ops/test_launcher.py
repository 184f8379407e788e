"""``cmg up`` (what ``make run`` runs) on an empty data dir: key printed, SDK works, Ctrl-C
stops everything, and a crashed run (SIGKILL) does not block the next one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import psutil

from gateway.ops import local_services
from tests.conftest import ROOT
from tests.mock_upstream import MockUpstream


def start_up(data_dir: Path, port: int, mock: MockUpstream) -> tuple[subprocess.Popen[str], str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CMG_", "OPENROUTER_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        CMG_DATA_DIR=str(data_dir),
        CMG_PORT=str(port),
        OPENROUTER_BASE_URL=mock.base_url,
        OPENROUTER_API_KEY="sk-test",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "up"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    output: list[str] = []
    found = threading.Event()

    def drain() -> None:  # keep reading so the children never block on a full pipe
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                output.append(line)
                if "Ctrl-C stops everything" in line:  # the banner's last line
                    found.set()

    threading.Thread(target=drain, daemon=True).start()
    if not found.wait(90):
        proc.kill()
        proc.wait()
        raise AssertionError("no dev key printed:\n" + "".join(output))
    key = re.search(r"dev API key:\s+(cmg_\w+)", "".join(output))
    assert key is not None
    assert re.search(r"console:\s+http://\S+/ui", "".join(output))  # the console beside the key
    return proc, key.group(1)


def wait_answering(port: int, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.models.list()
            return client
        except openai.APIConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def processes_using(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            found.append(proc)
    return found


def test_make_run_prints_a_working_key_and_ctrl_c_stops_everything(
    tmp_path: Path, mock: MockUpstream
) -> None:
    data_dir = tmp_path / "data"
    port = local_services.free_port()
    proc, key = start_up(data_dir, port, mock)
    try:
        with wait_answering(port, key) as client:
            answer = client.chat.completions.create(
                model="mock/gpt", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content == "echo: hi"
            assert {m.id for m in client.models.list().data} >= {"mock/gpt"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.5)
    assert processes_using(data_dir) == []


def test_a_crashed_run_does_not_block_the_next(tmp_path: Path, mock: MockUpstream) -> None:
    data_dir = tmp_path / "data"
    port = local_services.free_port()
    first, key = start_up(data_dir, port, mock)
    wait_answering(port, key).close()
    first.send_signal(signal.SIGKILL)  # orphans postgres and redis
    first.wait()
    second, key_again = start_up(data_dir, port, mock)
    try:
        assert key_again == key  # the dev key survives restarts
        with wait_answering(port, key_again) as client:
            assert client.models.list().data
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=60) == 0
    finally:
        second.kill()
        second.wait()
    time.sleep(0.5)
    assert processes_using(data_dir) == []
