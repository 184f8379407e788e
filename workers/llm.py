"""What the summary and facts workers share to ask a chat model: the request body they send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class ChatBody:
    """A chat request as ``ProviderClient.send`` takes it (a model swap for each fallback)."""

    body: dict[str, Any]

    def with_model(self, model: str) -> ChatBody:
        return ChatBody({**self.body, "model": model})

    def payload(self) -> bytes:
        return orjson.dumps(self.body)
