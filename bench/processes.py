"""Child processes of a bench run, and the machine's load.

Every service starts in its own session (so its process group id is its pid), pinned to a CPU
with ``taskset`` and logging to a file; ``stop()`` signals that group only, so nothing started
here outlives the run and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

_CLK = os.sysconf("SC_CLK_TCK")


class ServiceFailed(RuntimeError):
    pass


class Service:
    """A long-running child: started at construction, stopped (group-wide) by ``stop()``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        log: Path,
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        cmd = [str(a) for a in argv]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]  # taskset execs: the pid stays the service's
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._signal(signal.SIGKILL)  # leftovers of the group (workers, helpers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def run_step(argv: Sequence[str | Path], *, env: Mapping[str, str], log: Path) -> str:
    """Run a set-up command to completion; its stdout, or ``ServiceFailed`` with its output."""
    cmd = [str(a) for a in argv]
    done = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=300)
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise ServiceFailed(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def wait_http(
    url: str, service: Service, *, headers: Mapping[str, str] | None = None, timeout: float = 120
) -> None:
    """Poll ``url`` until it answers 200; fail early (with the log tail) if the service dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise ServiceFailed(
                f"{service.name} exited {service.proc.returncode}:\n{service.tail()}"
            )
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.25)
    raise ServiceFailed(
        f"{service.name} not ready at {url} after {timeout:.0f}s:\n{service.tail()}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the whole machine kept busy over the next ``seconds``."""
    busy0, total0 = _cpu_jiffies()
    time.sleep(seconds)
    busy1, total1 = _cpu_jiffies()
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until other load drops to ``limit`` busy cores; the last
    reading. A loaded box skews every figure, so the caller notes what it measured under."""
    deadline = time.monotonic() + max_wait
    busy = busy_cores()
    if busy > limit:
        print(f"  box busy ({busy:.2f} cores): waiting up to {max_wait:.0f} s", flush=True)
    while busy > limit and time.monotonic() < deadline:
        time.sleep(1)
        busy = busy_cores()
    return busy


class OutsideLoad:
    """Cores the rest of the machine kept busy while a measurement ran: the box's user + system
    time (+ steal) less what the bench's own processes used (the given process trees and every
    child this process waited for, i.e. bench.py and its wrk). Interrupt time is left out: it is
    mostly the loopback traffic of the measurement itself."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = pids
        self.cores = 0.0

    def __enter__(self) -> OutsideLoad:
        self._t0 = time.monotonic()
        self._box0 = _task_jiffies()
        self._own0 = self._own()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self._t0, 1e-6)
        box = (_task_jiffies() - self._box0) / _CLK / wall
        self.cores = round(max(0.0, box - (self._own() - self._own0) / wall), 2)

    def _own(self) -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return tree_cpu_seconds(self._pids) + children.ru_utime + children.ru_stime


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants."""
    parents: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry)
        parents.setdefault(int(fields[1]), []).append(pid)
        times[pid] = int(fields[11]) + int(fields[12])
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(parents.get(pid, ()))
    return sum(times.get(pid, 0) for pid in seen) / _CLK


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _task_jiffies() -> int:
    """user + nice + system + steal jiffies over all CPUs."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return values[0] + values[1] + values[2] + (values[7] if len(values) > 7 else 0)


def _cpu_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def stop_on_signals() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every started process is stopped on the way out."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up finish
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
