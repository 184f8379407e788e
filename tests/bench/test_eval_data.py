"""The eval's generated set and BM25 baseline: deterministic, well-formed, scored as documented."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from bench import bm25, conversations, recall_score
from bench.conversations import Question


def test_synthetic_set_is_deterministic_and_its_gold_exists() -> None:
    data = conversations.build(personas=3)
    assert data == conversations.build(personas=3)
    assert data != conversations.build(personas=3, seed=1)
    keys = {t.key for t in data.turns}
    assert len(keys) == len(data.turns)
    assert {q.category for q in data.questions} == set(conversations.CATEGORIES)
    for q in data.questions:
        assert q.gold and all(group <= keys for group in q.gold)
        assert len(q.gold) == (2 if q.category == "multi-hop" else 1)
        assert bool(q.stale) == (q.category == "updated")


def test_relative_dates_resolve_against_the_session_date() -> None:
    data = conversations.build(personas=4)
    by_key = {t.key: t for t in data.turns}
    dated = [q for q in data.questions if q.text.startswith("What did I do on ")]
    assert dated
    for q in dated:
        (key,) = q.gold[0]
        said, on = by_key[key].created_at, q.text.removeprefix("What did I do on ").rstrip("?")
        day = datetime.strptime(on, "%A %d %B %Y").date()
        back = (said.date() - day).days
        match = re.search(
            r"(Yesterday|Two days ago|Three days ago|Last \w+|On \w+) I", by_key[key].content
        )
        assert match and 1 <= back <= 7
        phrase = match.group(1)
        if phrase in ("Yesterday", "Two days ago", "Three days ago"):
            assert back == {"Yesterday": 1, "Two days ago": 2, "Three days ago": 3}[phrase]
        else:
            assert phrase.split()[1] == f"{day:%A}"


def test_bm25_ranks_rare_shared_words_first() -> None:
    index = bm25.Index(
        [("a", "The cat sat on the mat"), ("b", "A beagle called Waffles"), ("c", "cat cat cat")]
    )
    assert index.search("Where is Waffles the beagle?", 10) == ["b"]
    assert index.search("the cat", 10)[0] == "c"
    assert index.search("the of and", 10) == []  # stop words only


def test_recall_counts_each_evidence_group() -> None:
    q = Question("u", "multi-hop", "f", "?", (frozenset({"x", "x2"}), frozenset({"y"})))
    assert recall_score.recall_at(q, ["n", "x2", "m"], 5) == 0.5
    assert recall_score.recall_at(q, ["y", "x"], 5) == 1.0
    assert recall_score.reciprocal_rank(q, ["n", "m", "y"]) == 1 / 3
    scores = recall_score.score([q], [["y"]], ["multi-hop"])
    assert scores["overall"].recall[0] == 0.5 and scores["multi-hop"].n == 1


def test_eval_says_when_the_locomo_data_is_absent(tmp_path: Path) -> None:
    from bench import recall_eval

    args = recall_eval._parser().parse_args(
        ["--locomo", str(tmp_path / "no.json"), "--personas", "1"]
    )
    notes: list[str] = []
    sets = recall_eval._sets(args, notes)
    assert [s.name for s in sets] == ["synthetic"]
    assert len(notes) == 1 and "absent" in notes[0]


def test_the_held_out_interval_brackets_the_mean_and_narrows_with_more_questions() -> None:
    from bench.fit_ranker import interval

    few = [1.0, 0.0] * 20
    many = few * 25
    low, high = interval(few)
    assert low < 0.5 < high
    assert interval(few) == (low, high)  # seeded: the same figures on every run
    wide, narrow = high - low, interval(many)[1] - interval(many)[0]
    assert 0 < narrow < wide / 2
    assert interval([0.7] * 30) == pytest.approx((0.7, 0.7))
