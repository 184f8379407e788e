"""``cmg``: serve, migrate, manage workspaces and keys, start the dev stack.

The CLI is an edge: it builds ``Settings`` from the environment and, when ``DATABASE_URL`` /
``REDIS_URL`` are unset, starts (or adopts) the embedded services in ``CMG_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.errors import GatewayError
from gateway.settings import Settings

T = TypeVar("T")
log = logging.getLogger("cmg.cli")


@contextlib.contextmanager
def services(settings: Settings) -> Iterator[Settings]:
    """Settings with real database and Redis URLs, starting embedded ones where unset.

    What this process started (or adopted from a dead starter) it stops on the way out, SIGTERM
    and Ctrl-C included; a service another live process started is left running, and logged.
    """
    from gateway import embedded

    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_exits())
        database_url, redis_url = settings.database_url, settings.redis_url
        if not database_url:
            pg = embedded.start_postgres(
                settings.data_dir, shared_buffers=settings.pg_shared_buffers
            )
            if _claim("PostgreSQL", pg.pgdata.parent / "pg.owner", adopted=pg.adopted):
                stack.callback(_release, "PostgreSQL", pg.pgdata.parent / "pg.owner", pg.stop)
            database_url = pg.url
        if not redis_url:
            rd = embedded.start_redis(settings.data_dir)
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


def _db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(session)`` in one committed transaction."""
    from memory.db import run_transaction

    with services(settings) as resolved:
        return run_transaction(resolved.database_url, work)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from gateway.exposure import check_master_key

    check_master_key(settings.master_key, args.host or settings.host)  # before anything starts
    from memory.ranker import Ranker, RankerError

    try:  # before anything starts: a bad weights file is a clear error, not a failed request
        Ranker.load(Path(settings.recall_ranker) if settings.recall_ranker else None)
    except RankerError as exc:
        raise SystemExit(f"cmg serve: {exc}") from exc
    from gateway.observe import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    with services(settings) as resolved:
        _serve(args, resolved, migrate=args.migrate or not settings.database_url)


def _serve(args: argparse.Namespace, settings: Settings, *, migrate: bool) -> None:
    import uvicorn

    from memory import migrate as migrations

    if migrate:
        migrations.upgrade(settings.database_url, embedding_dim=settings.embedding_dim)
    host, port = args.host or settings.host, args.port or settings.port
    workers = args.workers or settings.workers
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_config": None,  # ours (configure_logging): one format for every logger
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": 10,
    }
    if workers > 1:
        os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = (
            settings.database_url,
            settings.redis_url,
        )
        _multiprocess_metrics(settings, port)
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=workers, **common)
    else:
        from gateway.app import create_app
        from gateway.metrics import serve_on_port

        serve_on_port(host, settings.metrics_port)
        uvicorn.run(create_app(settings), **common)


def _multiprocess_metrics(settings: Settings, port: int) -> None:
    """prometheus-client's multiprocess mode: one fresh directory shared by the workers."""
    import shutil

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(
        (settings.data_dir / f"prometheus-{port}").resolve()
    )
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from memory import migrate

    with services(settings) as resolved:
        migrate.upgrade(resolved.database_url, embedding_dim=settings.embedding_dim)
    print("database is at the latest revision")


def cmd_workspace_create(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.create_workspace(session, args.name)

    workspace = _db(settings, work)
    _emit(args, {"id": str(workspace.id), "name": workspace.name}, f"workspace {workspace.name}")


def cmd_workspace_set(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    changes: dict[str, Any] = {}
    for pair in args.pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"cmg: expected KEY=VALUE, got {pair!r}")
        try:
            changes[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            changes[key] = raw  # bare words such as on/off

    async def work(session: Any) -> Any:
        return await workspaces.update_settings(session, args.name, changes)

    workspace = _db(settings, work)
    _emit(
        args,
        {"name": workspace.name, "settings": workspace.settings},
        f"{workspace.name}: {workspace.settings}",
    )


def cmd_workspace_list(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    rows = _db(settings, workspaces.list_workspaces)
    data = [{"id": str(w.id), "name": w.name} for w in rows]
    _emit(args, data, "\n".join(f"{w['id']}  {w['name']}" for w in data))


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.create_key(
            session, args.workspace, name=args.name, expires_in_days=args.expires_in,
            rpm_limit=args.rpm, tpm_limit=args.tpm,
        )  # fmt: skip

    secret, info = _db(settings, work)
    _emit(args, {**info.as_json(), "key": secret}, secret)


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.list_keys(session, args.workspace)

    keys = [k.as_json() for k in _db(settings, work)]
    lines = [
        f"{k['id']}  {k['workspace']:<20} {k['prefix']}…  {k['name']:<16} "
        f"{'revoked' if k['revoked_at'] else 'active'}"
        for k in keys
    ]
    _emit(args, keys, "\n".join(lines))


def cmd_key_limits(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.set_key_limits(
            session, args.id, rpm_limit=args.rpm or None, tpm_limit=args.tpm or None
        )

    info = _db(settings, work)
    _emit(args, info.as_json(), f"{info.id}: rpm={info.rpm_limit} tpm={info.tpm_limit}")


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.revoke_key(session, args.id)

    info = _db(settings, work)
    _emit(args, info.as_json(), f"revoked {info.id}")


def cmd_catalog_sync(args: argparse.Namespace, settings: Settings) -> None:
    with services(settings) as resolved:
        count = sync_catalog(resolved)
    print(f"catalog: {count} models")


def sync_catalog(settings: Settings) -> int:
    from gateway.providers import config as provider_config
    from gateway.providers.client import ProviderClient
    from workers import catalog

    async def work(session: Any) -> int:
        client = ProviderClient(settings)
        await client.start()
        try:
            return await catalog.sync(session, client, provider_config.load(settings))
        finally:
            await client.close()

    return _db(settings, work)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from workers import schedule
    from workers.outbox import QUEUES

    queues = [name.strip() for name in args.queues.split(",") if name.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise SystemExit(f"cmg worker: unknown queue(s) {unknown}; choose from {list(QUEUES)}")
    _log_to_stderr(settings)
    with services(settings) as resolved:
        schedule.run_worker(resolved, queues, burst=args.burst)


def cmd_scheduler(args: argparse.Namespace, settings: Settings) -> None:
    from workers import schedule

    _log_to_stderr(settings)
    with services(settings) as resolved:
        schedule.run_scheduler(resolved)


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> None:
    with services(settings) as resolved:
        _jobs(args, resolved)


def _jobs(args: argparse.Namespace, settings: Settings) -> None:
    from redis import Redis
    from sqlalchemy.orm import Session

    from memory.db import sync_engine
    from workers import schedule
    from workers.outbox import backlog_sync

    with Redis.from_url(settings.redis_url) as redis:
        data = schedule.status(redis)
    engine = sync_engine(settings.database_url)
    try:
        with Session(engine) as session:
            pending, oldest = backlog_sync(session)
    finally:
        engine.dispose()
    data["outbox"] = {"pending": pending, "oldest_seconds": round(oldest, 1)}
    lines = [f"{'queue':<12} {'queued':>7} {'started':>8} {'retrying':>9} {'failed':>7}"]
    for name, q in data["queues"].items():
        lines.append(
            f"{name:<12} {q['queued']:>7} {q['started']:>8} {q['scheduled']:>9} {q['failed']:>7}"
        )
        if q["latest_failure"]:
            failure = q["latest_failure"]
            lines.append(f"  latest failure {failure['id']}: {failure['error']}")
    lines.append(f"outbox: {pending} pending, oldest {oldest:.1f}s")
    lines.append(f"workers: {len(data['workers'])}; periodic jobs: {len(data['periodic'])}")
    _emit(args, data, "\n".join(lines))


def cmd_memory_reindex(args: argparse.Namespace, settings: Settings) -> None:
    with services(settings) as resolved:
        _memory_reindex(args, resolved)


def _memory_reindex(args: argparse.Namespace, settings: Settings) -> None:
    from sqlalchemy import select

    from memory.db import sync_engine
    from memory.schema import Workspace
    from workers import embedding
    from workers.outbox import EMBED, Enqueue, enqueue, redis_client

    engine = sync_engine(settings.database_url)
    try:
        workspace_id = None
        if args.workspace:
            with engine.connect() as conn:
                workspace_id = conn.scalar(
                    select(Workspace.id).where(Workspace.name == args.workspace)
                )
            if workspace_id is None:
                raise SystemExit(f"cmg: no workspace named {args.workspace!r}")
        if args.queue:
            ws = str(workspace_id) if workspace_id else None
            job = Enqueue(f"reindex-{ws or 'all'}", EMBED, "reindex_memory", {"workspace_id": ws})
            enqueue(redis_client(settings.redis_url), [job])
            print("reindex queued")
            return
        count = embedding.reindex(engine, workspace_id=workspace_id)
    finally:
        engine.dispose()
    print(f"{count} memory items reindexed")


def cmd_memory_reembed(args: argparse.Namespace, settings: Settings) -> None:
    with services(settings) as resolved:
        _memory_reembed(args, resolved)


def _memory_reembed(args: argparse.Namespace, settings: Settings) -> None:
    from sqlalchemy import select
    from sqlalchemy.orm import sessionmaker

    from memory.db import sync_engine
    from memory.schema import Workspace
    from workers import embedding
    from workers.outbox import drain_sync, redis_client

    model = embedding.model_name(settings)
    engine = sync_engine(settings.database_url)
    sessions = sessionmaker(engine)
    try:
        with sessions.begin() as session:
            workspace_id = None
            if args.workspace:
                workspace_id = session.scalar(
                    select(Workspace.id).where(Workspace.name == args.workspace)
                )
                if workspace_id is None:
                    raise SystemExit(f"cmg: no workspace named {args.workspace!r}")
            count = embedding.reembed(
                session, model, workspace_id=workspace_id, everything=args.all
            )
        try:
            drain_sync(sessions, redis_client(settings.redis_url))
        except Exception as exc:  # the jobs wait in the outbox until Redis is back
            print(f"cmg: jobs stay in the outbox for now ({type(exc).__name__})", file=sys.stderr)
    finally:
        engine.dispose()
    print(f"{count} memory items queued for re-embedding with {model}")


def _log_to_stderr(settings: Settings) -> None:
    import logging

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


def cmd_up(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import launcher

    launcher.up(settings)


def cmd_mcp(args: argparse.Namespace, settings: Settings) -> None:
    """A ready-to-paste MCP client config for this gateway (Cursor, Claude Code, Claude Desktop)."""
    key = args.key or os.environ.get("CMG_API_KEY", "")
    dev_key = settings.data_dir / "dev_key"
    if not key and dev_key.exists():
        key = dev_key.read_text().strip()
    if not key:
        sys.exit("cmg mcp: no key: pass --key cmg_... (or run `make run` once for a dev key)")
    url = args.url or f"http://{settings.host}:{settings.port}/mcp"
    auth = f"Bearer {key}"
    config = {"mcpServers": {"context-memory": {"type": "http", "url": url,
                                                "headers": {"Authorization": auth}}}}  # fmt: skip
    desktop = {"mcpServers": {"context-memory": {
        "command": "npx", "args": ["-y", "mcp-remote", url, "--header", f"Authorization:{auth}"],
    }}}  # fmt: skip
    print(orjson.dumps(config, option=orjson.OPT_INDENT_2).decode())
    print(
        "\n# Cursor (~/.cursor/mcp.json) and Claude Code (.mcp.json) take the JSON above;\n"
        f"# or: claude mcp add --transport http context-memory {url} "
        f'--header "Authorization: {auth}"\n'
        "# Claude Desktop (claude_desktop_config.json) reaches remote servers through mcp-remote:",
        file=sys.stderr,
    )
    print(orjson.dumps(desktop, option=orjson.OPT_INDENT_2).decode(), file=sys.stderr)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    elif text:
        print(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmg", description="Context Memory Gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (uvicorn)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--migrate", action="store_true", help="run migrations first")
    serve.set_defaults(run=cmd_serve)

    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(run=cmd_migrate)
    sub.add_parser("up", help="dev stack: services, migrations, dev key, gateway").set_defaults(
        run=cmd_up
    )

    mcp = sub.add_parser("mcp", help="print an MCP client config (Cursor, Claude) for a key")
    mcp.add_argument("--key", help="workspace key (default: $CMG_API_KEY, else the dev key)")
    mcp.add_argument("--url", help="the gateway's /mcp URL as clients reach it")
    mcp.set_defaults(run=cmd_mcp)
    catalog = sub.add_parser("catalog", help="model catalog").add_subparsers(
        dest="action", required=True
    )
    catalog.add_parser("sync", help="fetch every provider's /models").set_defaults(
        run=cmd_catalog_sync
    )

    worker = sub.add_parser("worker", help="run an RQ worker (embed, summarize, maintenance)")
    worker.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    worker.add_argument("--queues", default="embed,summarize,maintenance", metavar="Q1,Q2")
    worker.set_defaults(run=cmd_worker)
    sub.add_parser("scheduler", help="run the periodic-job scheduler").set_defaults(
        run=cmd_scheduler
    )
    jobs = sub.add_parser("jobs", help="queue depths, failures, outbox backlog")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(run=cmd_jobs)
    memory = sub.add_parser("memory", help="memory maintenance").add_subparsers(
        dest="action", required=True
    )
    reembed = memory.add_parser("reembed", help="re-embed items made by another embedder")
    reembed.add_argument("--workspace", metavar="NAME")
    reembed.add_argument("--all", action="store_true", help="every item, whatever its model")
    reembed.set_defaults(run=cmd_memory_reembed)
    reindex = memory.add_parser(
        "reindex", help="give stored memory the current recall index (online, resumable)"
    )
    reindex.add_argument("--workspace", metavar="NAME")
    reindex.add_argument("--queue", action="store_true", help="run it as a worker job instead")
    reindex.set_defaults(run=cmd_memory_reindex)

    workspace = sub.add_parser("workspace", help="manage workspaces").add_subparsers(
        dest="action", required=True
    )
    create = workspace.add_parser("create")
    create.add_argument("name")
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=cmd_workspace_create)
    wset = workspace.add_parser("set", help="memory=on|off|read|write redact_pii=true ...")
    wset.add_argument("name")
    wset.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    wset.add_argument("--json", action="store_true")
    wset.set_defaults(run=cmd_workspace_set)
    wlist = workspace.add_parser("list")
    wlist.add_argument("--json", action="store_true")
    wlist.set_defaults(run=cmd_workspace_list)

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    kcreate = key.add_parser("create")
    kcreate.add_argument("--workspace", required=True)
    kcreate.add_argument("--name", default="")
    kcreate.add_argument("--expires-in", type=float, metavar="DAYS")
    kcreate.add_argument("--rpm", type=int, help="requests per minute")
    kcreate.add_argument("--tpm", type=int, help="tokens per minute")
    kcreate.add_argument("--json", action="store_true")
    kcreate.set_defaults(run=cmd_key_create)
    klist = key.add_parser("list")
    klist.add_argument("--workspace")
    klist.add_argument("--json", action="store_true")
    klist.set_defaults(run=cmd_key_list)
    klimits = key.add_parser("limits", help="set per-minute limits (0 removes one)")
    klimits.add_argument("id")
    klimits.add_argument("--rpm", type=int, default=0)
    klimits.add_argument("--tpm", type=int, default=0)
    klimits.add_argument("--json", action="store_true")
    klimits.set_defaults(run=cmd_key_limits)
    krevoke = key.add_parser("revoke")
    krevoke.add_argument("id")
    krevoke.add_argument("--json", action="store_true")
    krevoke.set_defaults(run=cmd_key_revoke)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    try:
        args.run(args, settings)
    except GatewayError as exc:
        print(f"cmg: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
