"""Event-loop lag: how late the loop runs a timer, as a gauge and a log warning.

A task of the lifespan (``deps.build``) sleeps ``_TICK`` at a time and measures how much later
than asked it woke up: that is how long something held the loop (CPU work done inline, a
blocking call). ``cmg_event_loop_lag_seconds`` shows the worst lag of the last few seconds;
a wake-up later than ``WARN_SECONDS`` is logged as a warning, since then every request of the
replica waited that long.
"""

from __future__ import annotations

import asyncio
import logging

from core.metrics import LOOP_LAG

WARN_SECONDS = 0.1
_TICK = 0.05
_WINDOW = 5.0  # the gauge keeps a stall visible this long (two Prometheus scrapes at 2.5 s)

log = logging.getLogger("cmg.lag")


async def watch_loop(tick: float = _TICK, window: float = _WINDOW) -> None:
    loop = asyncio.get_running_loop()
    previous = current = 0.0
    window_end = loop.time() + window
    while True:
        asked = loop.time() + tick
        await asyncio.sleep(tick)
        now = loop.time()
        lag = max(0.0, now - asked)
        if lag > WARN_SECONDS:
            log.warning("the event loop was held for %.0f ms", lag * 1000)
        current = max(current, lag)
        if now >= window_end:
            previous, current, window_end = current, 0.0, now + window
        LOOP_LAG.set(max(previous, current))
