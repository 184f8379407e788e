"""bench.locomo: LoCoMo-format conversations become memory-API turns and scored questions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bench import locomo

_SAMPLE = {
    "sample_id": "conv-x",
    "conversation": {
        "speaker_a": "Ana",
        "speaker_b": "Ben",
        "session_2_date_time": "9:05 am on 3 June, 2023",
        "session_2": [
            {"speaker": "Ben", "dia_id": "D2:1", "text": "Back from Oslo."},
        ],
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "Any summer plans?"},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Adopting!", "blip_caption": "a dog"},
        ],
    },
    "qa": [
        {"question": "Where was Ben?", "answer": "Oslo", "evidence": ["D2:1"], "category": 4},
        {"question": "Plans?", "answer": "a", "evidence": ["D:1:2; D1:1"], "category": 1},
        {"question": "Lost", "answer": "b", "evidence": ["D7:7"], "category": 2},
        {"question": "Trick?", "adversarial_answer": "c", "evidence": ["D1:1"], "category": 5},
    ],
}


def test_load_turns_and_questions(tmp_path: Path) -> None:
    path = tmp_path / "mini.json"
    path.write_text(json.dumps([_SAMPLE]))
    data = locomo.load(path)

    assert [t.key for t in data.turns] == ["conv-x/D1:1", "conv-x/D1:2", "conv-x/D2:1"]
    first, photo, later = data.turns
    assert first.content == "Ana: Any summer plans?"
    assert photo.content == "Ben: Adopting! [shares a photo of a dog]"
    assert {t.user for t in data.turns} == {"conv-x"}
    assert [t.thread_id for t in data.turns] == ["conv-x/s1", "conv-x/s1", "conv-x/s2"]
    assert first.created_at == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert first.created_at < photo.created_at < later.created_at

    by_text = {q.text: q for q in data.questions}
    assert "Lost" not in by_text  # its evidence matches no turn
    assert by_text["Where was Ben?"].category == "single-hop"
    assert by_text["Where was Ben?"].gold == (frozenset({"conv-x/D2:1"}),)
    assert by_text["Plans?"].category == "multi-hop"
    assert by_text["Plans?"].gold == (frozenset({"conv-x/D1:2"}), frozenset({"conv-x/D1:1"}))
    assert by_text["Trick?"].category == "adversarial"
