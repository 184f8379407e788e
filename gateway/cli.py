"""``cmg``: serve, migrate, manage workspaces and keys, start the dev stack.

The CLI is an edge: it builds ``Settings`` from the environment and, when ``DATABASE_URL`` /
``REDIS_URL`` are unset, starts (or adopts) the embedded services in ``CMG_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from gateway.errors import GatewayError
from gateway.settings import Settings

T = TypeVar("T")


def resolve_services(settings: Settings) -> Settings:
    """Settings with real database and Redis URLs, starting embedded ones where unset."""
    from gateway import embedded

    database_url, redis_url = settings.database_url, settings.redis_url
    if not database_url:
        database_url = embedded.start_postgres(settings.data_dir).url
    if not redis_url:
        redis_url = embedded.start_redis(settings.data_dir).url
    return dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)


def _db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(session)`` in one committed transaction."""
    from memory.db import async_engine, sessionmaker

    async def run() -> T:
        engine = async_engine(settings.database_url, pool_size=1)
        try:
            async with sessionmaker(engine).begin() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from memory import migrate

    settings = resolve_services(settings)
    if args.migrate or not Settings.from_env().database_url:
        migrate.upgrade(settings.database_url, embedding_dim=settings.embedding_dim)
    host, port = args.host or settings.host, args.port or settings.port
    workers = args.workers or settings.workers
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": 10,
    }
    if workers > 1:
        os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = settings.database_url, settings.redis_url
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=workers, **common)
    else:
        from gateway.app import create_app

        uvicorn.run(create_app(settings), **common)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from memory import migrate

    migrate.upgrade(resolve_services(settings).database_url, embedding_dim=settings.embedding_dim)
    print("database is at the latest revision")


def cmd_workspace_create(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.create_workspace(session, args.name)

    workspace = _db(resolve_services(settings), work)
    _emit(args, {"id": str(workspace.id), "name": workspace.name}, f"workspace {workspace.name}")


def cmd_workspace_list(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    rows = _db(resolve_services(settings), workspaces.list_workspaces)
    data = [{"id": str(w.id), "name": w.name} for w in rows]
    _emit(args, data, "\n".join(f"{w['id']}  {w['name']}" for w in data))


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.create_key(
            session, args.workspace, name=args.name, expires_in_days=args.expires_in
        )

    secret, info = _db(resolve_services(settings), work)
    _emit(args, {**info.as_json(), "key": secret}, secret)


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.list_keys(session, args.workspace)

    keys = [k.as_json() for k in _db(resolve_services(settings), work)]
    lines = [
        f"{k['id']}  {k['workspace']:<20} {k['prefix']}…  {k['name']:<16} "
        f"{'revoked' if k['revoked_at'] else 'active'}"
        for k in keys
    ]
    _emit(args, keys, "\n".join(lines))


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import workspaces

    async def work(session: Any) -> Any:
        return await workspaces.revoke_key(session, args.id)

    info = _db(resolve_services(settings), work)
    _emit(args, info.as_json(), f"revoked {info.id}")


def cmd_catalog_sync(args: argparse.Namespace, settings: Settings) -> None:
    count = sync_catalog(resolve_services(settings))
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


def cmd_up(args: argparse.Namespace, settings: Settings) -> None:
    from gateway import launcher

    launcher.up(settings)


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

    catalog = sub.add_parser("catalog", help="model catalog").add_subparsers(
        dest="action", required=True
    )
    catalog.add_parser("sync", help="fetch every provider's /models").set_defaults(
        run=cmd_catalog_sync
    )

    workspace = sub.add_parser("workspace", help="manage workspaces").add_subparsers(
        dest="action", required=True
    )
    create = workspace.add_parser("create")
    create.add_argument("name")
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=cmd_workspace_create)
    wlist = workspace.add_parser("list")
    wlist.add_argument("--json", action="store_true")
    wlist.set_defaults(run=cmd_workspace_list)

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    kcreate = key.add_parser("create")
    kcreate.add_argument("--workspace", required=True)
    kcreate.add_argument("--name", default="")
    kcreate.add_argument("--expires-in", type=float, metavar="DAYS")
    kcreate.add_argument("--json", action="store_true")
    kcreate.set_defaults(run=cmd_key_create)
    klist = key.add_parser("list")
    klist.add_argument("--workspace")
    klist.add_argument("--json", action="store_true")
    klist.set_defaults(run=cmd_key_list)
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
