"""Model catalog sync: each provider's ``GET /models`` (OpenRouter's format) into ``models``.

Ids are served as the client names them: a provider with a ``prefix`` serves ``prefix + id``.
Context length and per-token prices (prompt, completion, and cached input when the provider
lists one: OpenRouter's ``input_cache_read``) feed the context fit and cost accounting.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import UpstreamError
from core.providers import config as provider_config
from core.providers.client import ProviderClient
from core.providers.config import Provider, ProviderConfig
from core.providers.router import Target
from core.settings import Settings
from memory.schema import CatalogModel

log = logging.getLogger("cmg.catalog")


async def fetch(client: ProviderClient, provider: Provider) -> list[dict[str, Any]]:
    body = await client.get(Target(provider, "", ""), "/models")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"{provider.name}: /models is not JSON") from exc
    rows = data.get("data") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise UpstreamError(f"{provider.name}: /models has no data list")
    return [row for row in rows if isinstance(row, dict) and isinstance(row.get("id"), str)]


def catalog_row(provider: Provider, model: dict[str, Any]) -> dict[str, Any]:
    pricing: dict[str, Any] = model["pricing"] if isinstance(model.get("pricing"), dict) else {}
    context = model.get("context_length") or (model.get("top_provider") or {}).get("context_length")
    return {
        "id": provider.prefix + model["id"],
        "provider": provider.name,
        "upstream_id": model["id"],
        "context_length": int(context) if isinstance(context, int | float) else None,
        "prompt_price": _price(pricing.get("prompt")),
        "completion_price": _price(pricing.get("completion")),
        "cached_price": _price(pricing.get("input_cache_read")),
        "data": model,
    }


async def sync(session: AsyncSession, client: ProviderClient, config: ProviderConfig) -> int:
    """Upsert every reachable provider's models; a provider that fails keeps its old rows."""
    providers = [p for p in config.providers.values() if p.catalog]
    results = await asyncio.gather(*(fetch(client, p) for p in providers), return_exceptions=True)
    count = 0
    for provider, result in zip(providers, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("catalog sync of %s failed: %s", provider.name, result)
            continue
        rows = list({row["id"]: row for row in (catalog_row(provider, m) for m in result)}.values())
        await session.execute(delete(CatalogModel).where(CatalogModel.provider == provider.name))
        if rows:
            stmt = insert(CatalogModel).values(rows)
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[CatalogModel.id],
                    set_={c: stmt.excluded[c] for c in rows[0] if c != "id"},
                )
            )
        count += len(rows)
    return count


async def sync_once(session: AsyncSession, settings: Settings) -> int:
    """``sync`` with a provider client of its own: the scheduled job, ``cmg catalog sync`` and
    ``cmg up`` (the gateway syncs with the client it already has)."""
    client = ProviderClient(settings)
    await client.start()
    try:
        return await sync(session, client, provider_config.load(settings))
    finally:
        await client.close()


def _price(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        return None
    return price if price >= 0 else None
