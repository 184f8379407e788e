"""``cmg``: serve, migrate, manage workspaces and keys, start the dev stack.

The CLI is an edge: it builds ``Settings`` from the environment and, when ``DATABASE_URL`` /
``REDIS_URL`` are unset, starts (or adopts) the embedded services in ``CMG_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

import orjson

from core.errors import GatewayError
from core.settings import Settings
from gateway.ops.local_services import in_transaction as _db
from gateway.ops.local_services import services

T = TypeVar("T")
log = logging.getLogger("cmg.cli")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from gateway.ops.exposure import check_master_key

    check_master_key(settings.master_key, args.host or settings.host)  # before anything starts
    from memory.ranker import Ranker, RankerError

    try:  # before anything starts: a bad weights file is a clear error, not a failed request
        Ranker.load(Path(settings.recall_ranker) if settings.recall_ranker else None)
    except RankerError as exc:
        raise SystemExit(f"cmg serve: {exc}") from exc
    from gateway.services.observe import configure_logging

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
        from core.metrics import serve_on_port
        from gateway.app import create_app

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
    from gateway.services import workspaces

    workspace = _db(settings, workspaces.create_workspace, args.name)
    _emit(args, {"id": str(workspace.id), "name": workspace.name}, f"workspace {workspace.name}")


def cmd_workspace_set(args: argparse.Namespace, settings: Settings) -> None:
    from gateway.services import workspaces

    changes: dict[str, Any] = {}
    for pair in args.pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"cmg: expected KEY=VALUE, got {pair!r}")
        try:
            changes[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            changes[key] = raw  # bare words such as on/off

    workspace = _db(settings, workspaces.update_settings, args.name, changes)
    _emit(
        args,
        {"name": workspace.name, "settings": workspace.settings},
        f"{workspace.name}: {workspace.settings}",
    )


def cmd_workspace_list(args: argparse.Namespace, settings: Settings) -> None:
    from gateway.services import workspaces

    rows = _db(settings, workspaces.list_workspaces)
    data = [{"id": str(w.id), "name": w.name} for w in rows]
    _emit(args, data, "\n".join(f"{w['id']}  {w['name']}" for w in data))


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> None:
    from gateway.services import workspaces

    secret, info = _db(
        settings, workspaces.create_key, args.workspace, name=args.name,
        expires_in_days=args.expires_in, rpm_limit=args.rpm, tpm_limit=args.tpm,
    )  # fmt: skip
    _emit(args, {**info.as_json(), "key": secret}, secret)


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> None:
    from gateway.services import workspaces

    keys = [k.as_json() for k in _db(settings, workspaces.list_keys, args.workspace)]
    lines = [
        f"{k['id']}  {k['workspace']:<20} {k['prefix']}…  {k['name']:<16} "
        f"{'revoked' if k['revoked_at'] else 'active'}"
        for k in keys
    ]
    _emit(args, keys, "\n".join(lines))


def cmd_key_limits(args: argparse.Namespace, settings: Settings) -> None:
    from gateway.services import workspaces

    info = _db(
        settings, workspaces.set_key_limits, args.id,
        rpm_limit=args.rpm or None, tpm_limit=args.tpm or None,
    )  # fmt: skip
    _emit(args, info.as_json(), f"{info.id}: rpm={info.rpm_limit} tpm={info.tpm_limit}")


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> None:
    from gateway.services import workspaces

    info = _db(settings, workspaces.revoke_key, args.id)
    _emit(args, info.as_json(), f"revoked {info.id}")


def cmd_catalog_sync(args: argparse.Namespace, settings: Settings) -> None:
    from workers import catalog

    print(f"catalog: {_db(settings, catalog.sync_once, settings)} models")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from memory.outbox import QUEUES
    from workers import schedule

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
    from memory.outbox import backlog_sync
    from workers import schedule

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
    from memory.outbox import EMBED, Enqueue, enqueue, redis_client
    from memory.schema import Workspace
    from workers import vectors

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
        count = vectors.reindex(engine, workspace_id=workspace_id)
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
    from memory.embedder import model_name
    from memory.outbox import drain_sync, redis_client
    from memory.schema import Workspace
    from workers import vectors

    model = model_name(settings)
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
            count = vectors.reembed(session, model, workspace_id=workspace_id, everything=args.all)
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
    from gateway.ops import launcher

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
