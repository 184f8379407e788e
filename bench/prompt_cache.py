"""How much of each prompt a provider's cache can serve, with memory on and off (issue #17).

    python -m bench.prompt_cache            # or: make bench-cache

A 16-turn conversation (a ~1,700-token system prompt, ~220-token user turns, the client
resending the whole history as the OpenAI SDK does) goes through a real gateway (embedded
PostgreSQL and Redis, a real worker) to the real mock upstream (``tests/mock_upstream.py``),
which records every body it receives. The workspace holds notes the turns ask about, so memory
has something to inject. Runs: memory off; memory on with each placement the gateway offers
(``user``: a text part after the latest user message's own text, the default; ``system``: a
system message right before the latest user message). Two more layouts are rebuilt from the
``user`` run's bodies (same block, same turns) to compare with: the block in front of the
history as the gateway placed it before (``before: after system``) and the block prepended to
the latest user message (``user, prepended``).

The cacheable share follows OpenAI's rule on the received bodies: a prompt's longest common
token prefix with any earlier prompt of the conversation counts from 1,024 tokens, in 128-token
steps. Tokens are o200k's, each message framed as ``<|im_start|>role\\n ... <|im_end|>``. Input
cost assumes cached tokens at 10% of the input price. Everything started here is stopped and the
temp dir deleted. Results: ``bench-results/prompt-cache.md``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from bench.memory_stack import Api, memory_stack
from memory.tokens import encoding_for_model
from tests.mock_upstream import MockUpstream

TURNS = 16
STEP, MINIMUM = 128, 1024  # OpenAI: cached in 128-token steps from 1,024 tokens
CACHED_PRICE = 0.1  # cached input at 10% of the input price
_ENCODING = encoding_for_model("gpt-4o")
_WORDS = (
    "system service deploy queue latency budget owner region storage backup release metric "
    "alert config index shard replica window retry schema token cluster node pipeline cache "
    "review ticket customer invoice report draft module branch commit rollout staging traffic"
).split()
_SERVICES = (
    "Heron", "Marlin", "Osprey", "Puffin", "Quokka", "Raven", "Sable", "Tapir",
    "Umbra", "Vireo", "Walrus", "Xerus", "Yak", "Zebu", "Auk", "Bison",
)  # fmt: skip


@dataclass
class Run:
    name: str
    prompts: list[list[int]]  # each received prompt, as tokens
    injected: int  # turns that got memory
    memory_tokens: int


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    rng = random.Random(args.seed)
    system = _system_prompt(rng)
    turns = [_user_turn(rng, _SERVICES[i % len(_SERVICES)], i) for i in range(args.turns)]
    notes = [_note(rng, name) for name in _SERVICES]
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="cmg-cache-bench-") as tmp,
        MockUpstream() as mock,
        memory_stack(Path(tmp) / "logs", upstream=mock.base_url) as stack,
    ):
        providers = Path(tmp) / "providers.toml"
        providers.write_text(
            f'[[provider]]\nname = "sys"\nbase_url = "{mock.base_url}"\nprefix = "sys/"\n'
            'catalog = false\nmemory_placement = "system"\n'
        )
        stack.start_gateway(extra_env={"CMG_PROVIDERS": str(providers)})
        stack.start_worker()
        for name, model, memory in (
            ("memory off", "mock/gpt", "off"),
            ("memory on, user (chosen)", "mock/gpt", "on"),
            ("memory on, system", "sys/mock/gpt", "on"),
        ):
            _, key = stack.tenant(f"cache-{uuid.uuid4().hex[:8]}")
            _seed(stack.gateway_url, key, notes)
            bodies, injected, tokens = _converse(
                stack.gateway_url, key, model, memory, system, turns, mock
            )
            runs.append(Run(name, [_tokens(b) for b in bodies], injected, tokens))
            if name.startswith("memory on, user"):
                runs.append(_rebuilt("before: after system", bodies, _front, injected, tokens))
                runs.append(_rebuilt("user, prepended", bodies, _prepend, injected, tokens))
    table = render(runs, args)
    out = args.results_dir / "prompt-cache.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table, flush=True)


def _converse(
    url: str, key: str, model: str, memory: str, system: str, turns: Sequence[str],
    mock: MockUpstream,
) -> tuple[list[list[dict[str, Any]]], int, int]:  # fmt: skip
    """The conversation, turn by turn; (bodies the mock received, turns with memory, tokens)."""
    thread = f"conv-{uuid.uuid4().hex[:8]}"
    headers = {"X-Thread-Id": thread, "X-Memory": memory}
    messages: list[Any] = [{"role": "system", "content": system}]
    bodies, injected, tokens = [], 0, 0
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60) as client:
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            seen = len(mock.requests)
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_headers=headers
            )
            answer = raw.parse().choices[0].message.content or ""
            messages.append({"role": "assistant", "content": answer})
            body = next(r.json for r in mock.requests[seen:] if r.path.endswith("/completions"))
            bodies.append(body["messages"])
            count = int(raw.headers.get("x-memory-items", "0"))
            injected += count > 0
            tokens += int(raw.headers.get("x-memory-tokens", "0")) if count else 0
    return bodies, injected, tokens


def _seed(url: str, key: str, notes: list[str]) -> None:
    api = Api(url, key)
    try:
        status, body = api.add_items([{"content": n, "kind": "note"} for n in notes], wait=True)
        if status >= 300:
            raise RuntimeError(f"seeding memory answered {status}: {body}")
    finally:
        api.close()


def cacheable(prompts: Sequence[Sequence[int]]) -> list[int]:
    """Per prompt: the tokens OpenAI's rule would serve from cache (longest common prefix with
    any earlier prompt, from 1,024 tokens, in 128-token steps)."""
    out = []
    for i, prompt in enumerate(prompts):
        best = max((_common(prompt, earlier) for earlier in prompts[:i]), default=0)
        out.append(best // STEP * STEP if best >= MINIMUM else 0)
    return out


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _tokens(messages: list[dict[str, Any]]) -> list[int]:
    out: list[int] = []
    for message in messages:
        out += _ENCODING.encode(f"<|im_start|>{message['role']}\n", allowed_special="all")
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [p["text"] for p in content or []]
        for text in parts:
            out += _ENCODING.encode_ordinary(text)
        out += _ENCODING.encode("<|im_end|>\n", allowed_special="all")
    return out


def _split_block(message: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The latest user message as the client sent it, and the block the gateway appended."""
    content = message["content"]
    if isinstance(content, list) and len(content) == 2:
        return {**message, "content": content[0]["text"]}, content[1]["text"]
    return message, None


def _front(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last, block = _split_block(messages[-1])
    rest = [*messages[:-1], last]
    if block is None:
        return rest
    return [rest[0], {"role": "system", "content": block}, *rest[1:]]


def _prepend(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last, block = _split_block(messages[-1])
    if block is None:
        return [*messages[:-1], last]
    return [*messages[:-1], {**last, "content": [{"text": block}, {"text": last["content"]}]}]


def _rebuilt(name: str, bodies: list[list[dict[str, Any]]], layout: Any, inj: int, tok: int) -> Run:
    return Run(name, [_tokens(layout(b)) for b in bodies], inj, tok)


def render(runs: list[Run], args: argparse.Namespace) -> str:
    off = runs[0]
    off_share, off_cost = _share(off), _cost(off)
    lines = [
        f"# Prompt cache: {args.turns}-turn conversation, memory on and off",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `python -m bench.prompt_cache`. "
        "Cacheable share: OpenAI's rule on the bodies the mock upstream received. Input cost: "
        f"cached tokens at {CACHED_PRICE:.0%} of the input price, in units of one uncached token, "
        "memory's own tokens included.",
        "",
        "| layout | turns with memory | prompt tokens | cacheable | share | vs off "
        "| input cost | vs off | memory tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        total = sum(len(p) for p in run.prompts)
        cached = sum(cacheable(run.prompts))
        share, cost = _share(run), _cost(run)
        lines.append(
            f"| {run.name} | {run.injected}/{len(run.prompts)} | {total:,} | {cached:,} "
            f"| {share:.1%} | {share / off_share:.2f}x | {cost:,.0f} | {cost / off_cost:.2f}x "
            f"| {run.memory_tokens:,} |"
        )
    lines += [
        "",
        "Target (issue #17): memory-on share >= 0.9x memory off, memory on >= 80% of turns.",
        "`before: after system` and `user, prepended` are rebuilt from the `user` run's bodies "
        "(same blocks and turns, other layout).",
        "",
    ]
    return "\n".join(lines)


def _share(run: Run) -> float:
    return sum(cacheable(run.prompts)) / max(1, sum(len(p) for p in run.prompts))


def _cost(run: Run) -> float:
    cached = sum(cacheable(run.prompts))
    return sum(len(p) for p in run.prompts) - cached + CACHED_PRICE * cached


def _system_prompt(rng: random.Random) -> str:
    rules: list[str] = []
    while len(_ENCODING.encode_ordinary(" ".join(rules))) < 1700:
        rules.append(f"Rule {len(rules) + 1}: " + _filler(rng, 14) + ".")
    return "You are the operations assistant of a platform team. " + " ".join(rules)


def _user_turn(rng: random.Random, service: str, i: int) -> str:
    text = f"Turn {i + 1}. About the {service} service: "
    while len(_ENCODING.encode_ordinary(text)) < 210:
        text += _filler(rng, 12) + ". "
    return text + f"Which port and owner does {service} have?"


def _note(rng: random.Random, service: str) -> str:
    port, team, part = rng.randint(2000, 9999), rng.choice(_WORDS), rng.choice(_WORDS)
    return (
        f"The {service} service listens on port {port} and is owned by team {team}; "
        f"its {part} runs in region eu-{rng.randint(1, 4)}."
    )


def _filler(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=TURNS)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--results-dir", type=Path, default=Path("bench-results"))
    return parser


if __name__ == "__main__":
    main()
