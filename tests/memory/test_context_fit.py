"""The window fit and the placement as pure functions (real tokenizer): shapes the gateway tests
do not reach easily (tool turns, no user turn, a growing history's cut points)."""

from __future__ import annotations

from typing import Any

from memory.context import fit_window, inject
from memory.tokens import count_messages

BLOCK = {"role": "system", "content": "<memory>x</memory>"}


def _agent_history(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "sys"}]
    for i in range(turns):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        messages += [
            {"role": "user", "content": f"turn {i} " + "words " * 150},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": "result " * 100},
            {"role": "assistant", "content": "done " * 10},
        ]
    return messages


def test_kept_history_starts_at_a_user_turn_and_keeps_no_orphan_tool_result() -> None:
    for turns in range(12, 40, 3):
        messages = _agent_history(turns)
        kept, dropped = fit_window(messages, "gpt-4o", 4096, 1000)
        assert dropped > 0 and kept[0] == messages[0]
        assert kept[1]["role"] == "user"
        assert count_messages(kept, "gpt-4o") + 1000 <= 4096


def test_the_cut_moves_in_blocks_as_the_history_grows() -> None:
    starts = []
    for turns in range(30, 90):
        kept, dropped = fit_window(_agent_history(turns), "gpt-4o", 8192, 500)
        if dropped:
            starts.append(kept[1]["content"])
    assert len(starts) > 30
    assert len(set(starts)) <= len(starts) // 5  # one cut for many turns, not one per turn


def test_without_a_user_turn_nothing_is_dropped_and_the_block_closes_the_conversation() -> None:
    messages = [{"role": "system", "content": "s " * 3000}, {"role": "assistant", "content": "a"}]
    assert fit_window(messages, "gpt-4o", 1000, 100) == (messages, 0)
    placed, placement = inject(messages, BLOCK)
    assert placed == [*messages, BLOCK] and placement is not None and placement.index == 2


def test_inject_never_changes_the_callers_list_or_messages() -> None:
    messages = [{"role": "user", "content": "hi"}]
    placed, _ = inject(messages, BLOCK, breakpoint=True)
    assert messages == [{"role": "user", "content": "hi"}]
    assert placed[0]["content"][0] == {
        "type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}
    }  # fmt: skip
