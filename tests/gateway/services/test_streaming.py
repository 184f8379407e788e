"""The SSE relay's pure parts: the event splitter, re-framing with the malformed-event check,
the tap that reassembles what the stream said, and the answer remembered from it."""

from __future__ import annotations

import orjson

from gateway.services.streaming import StreamTap, _check, _EventSplitter, answer


def _chunk(**fields: object) -> bytes:
    return b"data: " + orjson.dumps({"object": "chat.completion.chunk", **fields})


def test_events_come_out_whole_whatever_the_chunk_boundaries() -> None:
    stream = b"data: 1\n\ndata: 2\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n"
    for size in (1, 2, 3, 7, len(stream)):
        splitter = _EventSplitter()
        events: list[bytes] = []
        for start in range(0, len(stream), size):
            events += splitter.feed(stream[start : start + size])
        assert events == [b"data: 1", b"data: 2", b": keep-alive", b"data: [DONE]"], size
        assert splitter.rest() == b""


def test_an_unterminated_last_event_is_kept_for_the_end() -> None:
    splitter = _EventSplitter()
    assert splitter.feed(b"data: 1\n\ndata: 2") == [b"data: 1"]
    assert splitter.rest() == b"data: 2"
    assert splitter.rest() == b""  # handed out once


def test_check_reframes_events_and_feeds_the_tap() -> None:
    tap = StreamTap()
    events = [
        _chunk(model="m", choices=[{"index": 0, "delta": {"content": "Hel"}}]),
        b": comment line\n" + _chunk(choices=[{"index": 0, "delta": {"content": "lo"}}]),
        _chunk(
            choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
            usage={"prompt_tokens": 3, "completion_tokens": 2},
        ),
        b"data: [DONE]",
    ]
    out, bad = _check(events, tap)
    assert not bad and out == b"".join(e + b"\n\n" for e in events)
    assert tap.text() == "Hello" and tap.model == "m" and tap.finish_reason == "stop"
    assert tap.usage == {"prompt_tokens": 3, "completion_tokens": 2} and tap.done


def test_a_malformed_event_stops_the_batch_before_it() -> None:
    tap = StreamTap()
    good = _chunk(choices=[{"delta": {"content": "a"}}])
    out, bad = _check(
        [good, b"data: {not json", _chunk(choices=[{"delta": {"content": "b"}}])], tap
    )
    assert bad and out == good + b"\n\n" and tap.text() == "a"


def test_the_tap_reassembles_tool_calls_and_ignores_odd_shapes() -> None:
    tap = StreamTap()
    first = {"index": 0, "id": "c1", "function": {"name": "get_", "arguments": '{"ci'}}
    rest = {"index": 0, "function": {"name": "weather", "arguments": 'ty": "Oslo"}'}}
    for chunk in (
        {"choices": [{"delta": {"tool_calls": [first]}}]},
        {"choices": [{"delta": {"tool_calls": [rest]}}]},
        {"choices": ["not a dict", {"index": "x", "delta": "not a dict"}]},
        {"choices": None, "error": {"message": "late failure"}},
    ):
        tap.observe(chunk)
    assert tap.error == {"message": "late failure"}
    assert answer(tap) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
    }  # fmt: skip


def test_a_stream_that_said_nothing_leaves_nothing_to_remember() -> None:
    tap = StreamTap()
    tap.observe({"choices": [{"delta": {"role": "assistant"}}]})
    assert answer(tap) is None
    tap.observe({"choices": [{"index": 1, "delta": {"content": "second choice only"}}]})
    assert answer(tap) is None  # memory keeps the first choice
