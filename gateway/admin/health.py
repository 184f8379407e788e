"""``/healthz`` (the process is alive) and ``/readyz`` (its dependencies answer)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

from gateway.deps import Deps


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Unauthenticated, so only up or down per dependency: no versions, models, errors or timings
    (``/admin/health``, behind the master key, has those)."""
    report = await checks(request.state.deps)
    body = {
        "status": report["status"],
        "checks": {name: {"ok": entry["ok"]} for name, entry in report["checks"].items()},
    }
    return Response(
        orjson.dumps(body), 200 if body["status"] == "ready" else 503, media_type="application/json"
    )


async def checks(deps: Deps, *, detailed: bool = False) -> dict[str, Any]:
    """Database, Redis and the embedder; with ``detailed``, the background backlogs too."""
    report = dict(await asyncio.gather(_database(deps), _redis(deps), _embedder(deps)))
    ok = all(entry["ok"] for entry in report.values())
    body: dict[str, Any] = {"status": "ready" if ok else "unavailable", "checks": report}
    if detailed:
        body["catalog_models"] = len(deps.catalog.list())
        body["usage_buffered"] = deps.usage.buffered
        body["change_notices"] = "listening" if deps.notices.up else "down: caches use lifetimes"
    return body


async def _embedder(deps: Deps) -> tuple[str, dict[str, Any]]:
    async def probe() -> None:
        await deps.memory.embed_query("readiness probe")

    result = await _timed(probe())
    result["model"] = deps.memory.embedder.name
    return "embedder", result


async def _database(deps: Deps) -> tuple[str, dict[str, Any]]:
    async def probe() -> None:
        async with deps.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return "database", await _timed(probe())


async def _redis(deps: Deps) -> tuple[str, dict[str, Any]]:
    async def probe() -> None:
        await deps.redis.ping()

    return "redis", await _timed(probe())


async def _timed(probe: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, timeout=2.0)
    except Exception as exc:  # any failure means "not ready"; the type tells the operator why
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
