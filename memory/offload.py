"""CPU work on request text, kept off the event loop (issue #15: no request holds the loop).

Redaction, token counting and hashing are linear in the text, but a body may be 8 MiB: at
~50 ms per MB of redaction or counting, one big request done inline would stall every other
request of the replica. Work on more than ``INLINE_CHARS`` characters runs in the default
thread pool instead (RE2 and tiktoken release the GIL while they match and encode); smaller
work stays inline, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

INLINE_CHARS = 16_384  # ~1 ms of redaction + counting: the most a request may hold the loop


async def offload(size: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``work(*args, **kwargs)``: inline when ``size`` (characters) is small, else in a thread."""
    if size <= INLINE_CHARS:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


def text_size(messages: Iterable[Any]) -> int:
    """A cheap estimate of the characters in chat messages (string contents and parts)."""
    size = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            size += len(content)
        elif content is not None or (isinstance(message, dict) and "tool_calls" in message):
            size += INLINE_CHARS // 4  # parts and tool calls: counted as sizeable, not walked
        size += 16
    return size
