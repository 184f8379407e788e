"""The limiter's Redis client against a real Redis, on the gateway's event loop (uvloop):
pipelined replies reach their own callers, and a flushed script, a restarted server, a stalled
server and a password are all handled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.ops import local_services
from gateway.services.scriptpipe import ScriptPipe

# Echoes its arguments and counts its calls in a key, so every reply says whose call it was.
ECHO = "redis.call('INCR', KEYS[1]); return {ARGV[1], ARGV[2]}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[local_services.EmbeddedRedis]:
    own = local_services.start_redis(tmp_path / "redis")
    try:
        yield own
    finally:
        own.stop()


def test_concurrent_calls_each_get_their_own_reply(server: local_services.EmbeddedRedis) -> None:
    async def scenario() -> list[object]:
        pipe = ScriptPipe(server.url, ECHO)
        try:
            return list(await asyncio.gather(*(pipe(["calls"], [i, i * i]) for i in range(200))))
        finally:
            await pipe.close()

    replies = uvloop.run(scenario())
    assert replies == [[str(i).encode(), str(i * i).encode()] for i in range(200)]
    assert redis.Redis.from_url(server.url).get("calls") == b"200"


def test_a_flushed_script_is_loaded_again(server: local_services.EmbeddedRedis) -> None:
    async def scenario() -> tuple[object, object]:
        pipe = ScriptPipe(server.url, ECHO)
        try:
            first = await pipe(["calls"], [1, 2])
            redis.Redis.from_url(server.url).script_flush()
            return first, await pipe(["calls"], [3, 4])
        finally:
            await pipe.close()

    assert uvloop.run(scenario()) == ([b"1", b"2"], [b"3", b"4"])


def test_a_script_error_fails_that_call_only(server: local_services.EmbeddedRedis) -> None:
    async def scenario() -> list[object]:
        pipe = ScriptPipe(server.url, "return redis.call('INCRBY', KEYS[1], ARGV[1])")
        try:
            return await asyncio.gather(
                pipe(["n"], [5]), pipe(["n"], ["not-a-number"]), pipe(["n"], [7]),  # type: ignore[list-item]
                return_exceptions=True,
            )  # fmt: skip
        finally:
            await pipe.close()

    first, failed, last = uvloop.run(scenario())
    assert (first, last) == (5, 12)
    assert isinstance(failed, ResponseError)


def test_a_restarted_server_is_reconnected_to(tmp_path: Path) -> None:
    own = local_services.start_redis(tmp_path / "redis")
    port = urlsplit(own.url).port

    async def scenario() -> tuple[object, BaseException, object]:
        nonlocal own
        pipe = ScriptPipe(own.url, ECHO, timeout=30.0)
        try:
            before = await pipe(["calls"], [1, 1])
            own.stop()
            # Closed or refused at once: a timeout (30 s) would be a RedisTimeoutError.
            with pytest.raises(RedisConnectionError) as down:
                await pipe(["calls"], [2, 2])
            own = local_services.start_redis(tmp_path / "redis", port=port)
            return before, down.value, await pipe(["calls"], [3, 3])
        finally:
            await pipe.close()

    try:
        before, down, after = uvloop.run(scenario())
    finally:
        own.stop()
    assert before == [b"1", b"1"] and after == [b"3", b"3"]
    assert not isinstance(down, RedisTimeoutError) and "Redis" in str(down)


def test_a_stalled_server_fails_the_call_with_a_timeout_then_recovers(
    server: local_services.EmbeddedRedis,
) -> None:
    async def scenario() -> object:
        pipe = ScriptPipe(server.url, ECHO, timeout=0.3)
        try:
            await pipe(["calls"], [0, 0])
            redis.Redis.from_url(server.url).execute_command("CLIENT", "PAUSE", 1500, "ALL")
            with pytest.raises(RedisTimeoutError):  # not a hang: pytest-timeout would fail it
                await pipe(["calls"], [1, 1])
            await asyncio.sleep(1.5)  # the pause is over
            return await pipe(["calls"], [2, 2])
        finally:
            await pipe.close()

    assert uvloop.run(scenario()) == [b"2", b"2"]


def test_password_and_database_come_from_the_url(server: local_services.EmbeddedRedis) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.config_set("requirepass", "s3cret")
    parts = urlsplit(server.url)
    good = f"redis://:s3cret@{parts.hostname}:{parts.port}/3"
    bad = f"redis://:wrong@{parts.hostname}:{parts.port}/3"

    async def scenario() -> object:
        pipe, refused = ScriptPipe(good, ECHO), ScriptPipe(bad, ECHO)
        try:
            with pytest.raises(RedisConnectionError, match="handshake"):
                await refused(["calls"], [0, 0])
            return await pipe(["calls"], [1, 2])
        finally:
            await pipe.close()
            await refused.close()

    assert uvloop.run(scenario()) == [b"1", b"2"]
    assert redis.Redis.from_url(good).get("calls") == b"1"  # written in database 3
    assert redis.Redis(host=parts.hostname, port=parts.port, password="s3cret").get("calls") is None
