"""The recall eval's real data: the LoCoMo dev conversations, as ``bench.conversations`` turns.

``/work/shared/data/locomo-dev/`` (``ROOT.parent / "shared"``; its README defines the format and
the measure) holds two long multi-session chats between two people, with questions whose
evidence is a list of turn ids. ``load`` turns each into ``Turn``s for the memory API (one end
user per conversation, one thread per session, the speaker's name at the start of the text as
a chat client would send it, a shared photo's caption appended) and ``Question``s whose gold is
one group per evidence turn. The data is only read here, never shipped or copied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.conversations import Dataset, Question, Turn

ROOT = Path(__file__).resolve().parents[1]
_RELATIVE = Path("shared") / "data" / "locomo-dev" / "locomo-dev.json"
# ../shared next to the checkout; a git worktree under <repo's parent>/wt/ finds it one level up
DEFAULT_PATH = next(
    (p for p in (ROOT.parent / _RELATIVE, ROOT.parent.parent / _RELATIVE) if p.is_file()),
    ROOT.parent / _RELATIVE,
)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
SCORED = ("multi-hop", "temporal", "open-domain", "single-hop")  # the overall figure: 1-4
TURN_SPACING = timedelta(seconds=10)  # keeps a session's turns in order by created_at

_SESSION = re.compile(r"session_(\d+)")
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")  # "D:11:26" is a typo for "D11:26"


def load(path: Path | None = None) -> Dataset:
    """Every conversation of the file at ``path`` (default: the shared dev split)."""
    raw = json.loads((path or DEFAULT_PATH).read_text())
    data = Dataset()
    for sample in raw:
        turns = list(_turns(sample))
        data.turns.extend(turns)
        data.questions.extend(_questions(sample, {t.key for t in turns}))
    return data


def available(path: Path | None = None) -> bool:
    return (path or DEFAULT_PATH).is_file()


def _turns(sample: Mapping[str, Any]) -> Iterator[Turn]:
    user = str(sample["sample_id"])
    conversation = sample["conversation"]
    sessions = sorted(
        (int(m.group(1)), key)
        for key in conversation
        if (m := _SESSION.fullmatch(key)) and isinstance(conversation[key], list)
    )
    for number, key in sessions:
        start = session_date(conversation[f"{key}_date_time"])
        for n, turn in enumerate(conversation[key]):
            yield Turn(
                key=f"{user}/{turn['dia_id']}",
                user=user,
                thread_id=f"{user}/s{number}",
                role="user",
                content=content(turn),
                created_at=start + n * TURN_SPACING,
            )


def content(turn: Mapping[str, Any]) -> str:
    """The text as a chat client would send it: the speaker's name first, a photo as words."""
    text = f"{turn['speaker']}: {turn['text']}"
    caption = turn.get("blip_caption")
    return f"{text} [shares a photo of {caption}]" if caption else text


def session_date(value: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"``, read as UTC (the data gives no zone)."""
    return datetime.strptime(value.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def evidence_ids(raw: list[str]) -> list[str]:
    """Normalised ``D<session>:<turn>`` ids; one entry may hold several ("D8:6; D9:17")."""
    ids: list[str] = []
    for entry in raw:
        for m in _EVIDENCE.finditer(str(entry)):
            ident = f"D{int(m.group(1))}:{int(m.group(2))}"
            if ident not in ids:
                ids.append(ident)
    return ids


def _questions(sample: Mapping[str, Any], keys: set[str]) -> Iterator[Question]:
    user = str(sample["sample_id"])
    for qa in sample["qa"]:
        gold = tuple(
            frozenset([key])
            for ident in evidence_ids(qa.get("evidence", []))
            if (key := f"{user}/{ident}") in keys
        )
        if not gold:
            continue  # no evidence turn to find: nothing to measure
        answer = qa.get("answer", qa.get("adversarial_answer", ""))
        yield Question(user, CATEGORIES[int(qa["category"])], str(answer), qa["question"], gold)
