"""What a chat turn is billed: the provider's usage when it sent one, tiktoken's count of what
went upstream (memory included) when it did not, and never a negative or non-integer figure."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.surfaces.chat import _tokens
from memory.tokens import count_messages, count_text

SENT = [
    {"role": "system", "content": "Reference: the user likes green tea."},
    {"role": "user", "content": "What should I drink?"},
]
ANSWER = {"role": "assistant", "content": "Green tea, as you like it."}
MODEL = "openai/gpt-4o-mini"


def test_the_providers_usage_wins_with_its_cached_share() -> None:
    usage = {"prompt_tokens": 120, "completion_tokens": 9,
             "prompt_tokens_details": {"cached_tokens": 64}}  # fmt: skip
    assert _tokens(SENT, ANSWER, usage, MODEL) == (120, 9, 64, False)


def test_without_usage_the_gateway_counts_what_it_sent_and_got() -> None:
    prompt, completion, cached, estimated = _tokens(SENT, ANSWER, None, MODEL)
    assert estimated and cached == 0
    assert prompt == count_messages(SENT, MODEL) > count_messages(SENT[1:], MODEL)  # memory too
    assert completion == count_text(ANSWER["content"], MODEL) > 0
    assert _tokens(SENT, None, None, MODEL)[1] == 0  # nothing answered, nothing completed


@pytest.mark.parametrize(
    ("usage", "billed"),
    [
        ({"prompt_tokens": -5, "completion_tokens": -1}, (0, 0, 0)),
        ({"prompt_tokens": 10, "completion_tokens": "7"}, (10, 0, 0)),
        ({"prompt_tokens": 10, "completion_tokens": True}, (10, 0, 0)),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}}, (10, 0, 10)),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": -3}}, (10, 0, 0)),
        ({"prompt_tokens": 10, "prompt_tokens_details": "lots"}, (10, 0, 0)),
    ],
)
def test_odd_provider_figures_are_clamped(usage: dict[str, Any], billed: tuple[int, ...]) -> None:
    assert _tokens(SENT, ANSWER, usage, MODEL) == (*billed, False)


@pytest.mark.parametrize(
    "usage", [{"prompt_tokens": "12"}, {"prompt_tokens": True}, {"completion_tokens": 3}, [], 7]
)
def test_usage_without_an_integer_prompt_count_is_ignored(usage: Any) -> None:
    assert _tokens(SENT, ANSWER, usage, MODEL)[3] is True
