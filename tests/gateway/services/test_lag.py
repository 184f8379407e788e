"""The event-loop lag watch (gateway.services.lag): a held loop shows in gauge and log."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import REGISTRY

from gateway.services.lag import WARN_SECONDS, watch_loop


def _gauge() -> float:
    return REGISTRY.get_sample_value("cmg_event_loop_lag_seconds") or 0.0


def test_a_held_loop_sets_the_gauge_and_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    held = 3 * WARN_SECONDS

    async def scenario() -> tuple[float, float]:
        watch = asyncio.create_task(watch_loop(tick=0.01, window=60))
        await asyncio.sleep(0.05)
        before = _gauge()
        time.sleep(held)  # what inline CPU work on a big request used to do
        await asyncio.sleep(0.05)
        after = _gauge()
        watch.cancel()
        return before, after

    with caplog.at_level(logging.WARNING, logger="cmg.lag"):
        before, after = asyncio.run(scenario())
    # the held time minus the part of a tick that had already passed when the loop was taken
    assert before < held - 0.01 <= after
    assert any("event loop was held" in r.getMessage() for r in caplog.records)
