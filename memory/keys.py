"""Ingest-time keys of a memory item, and the same keys read from a question.

The embed job writes an item's keys (``memory_items.keys``) beside its vector; recall's entity
leg and the ranker's features match a question's keys against them:

- ``speaker:<name>``: the name a chat client put before the text ("Caroline: ...");
- ``name:<word>``: proper nouns (capitalised words that are not everyday words);
- ``date:YYYY-MM-DD``, ``month:YYYY-MM``, ``year:YYYY``: the item's own date, and the dates
  its text mentions, relative ones ("yesterday", "last Friday", "two weeks ago", "next month")
  resolved against the item's date; ``moy:MM``, the month of the year alone, for a question
  that names a month without its year ("in July");
- ``time``: the text says when something happened or for how long ("for four years"), what
  "when" and "how long" questions need.

A question's dates are read as written: a month without a year becomes ``moy:MM``, never a
guess at the year, so what a search finds does not depend on the day it runs.

Every pattern here is linear-time: single character classes and alternations of literals, no
nested quantifiers (user text reaches them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SPEAKER = re.compile(r"([A-Z][A-Za-z'-]{0,40}):\s")
_MONTH_NAMES = (
    "january february march april may june july august september october november december"
)
_MONTHS = {m: i + 1 for i, m in enumerate(_MONTH_NAMES.split())}
_WEEKDAYS = {
    d: i for i, d in enumerate("monday tuesday wednesday thursday friday saturday sunday".split())
}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "a couple of": 2, "couple of": 2, "a few": 3, "few": 3, "several": 3}  # fmt: skip
_UNITS = {"day": 1, "days": 1, "week": 7, "weeks": 7, "month": 30, "months": 30, "year": 365,
          "years": 365}  # fmt: skip
_RELATIVE = re.compile(
    r"\b(yesterday|today|tonight|last night|this morning|"
    r"(?:last|this|next|past) (?:week|weekend|month|year|monday|tuesday|wednesday|thursday|"
    r"friday|saturday|sunday)|"
    r"(\d{1,2}|a couple of|a few|an|a|one|two|three|four|five|six|several) "
    r"(days?|weeks?|months?|years?) ago)\b",
    re.IGNORECASE,
)
_ABSOLUTE = re.compile(
    r"\b(?:(\d{1,2}) )?(january|february|march|april|may|june|july|august|september|october|"
    r"november|december)(?: (\d{1,2}))?,? ?((?:19|20)\d\d)?\b",
    re.IGNORECASE,
)
_YEAR = re.compile(r"\b((?:19|20)\d\d)\b")
_ISO = re.compile(r"\b((?:19|20)\d\d)-(\d\d)-(\d\d)\b")
# "as of December 2023" is when a state is taken, not when anything happened: no date key.
_AS_OF = re.compile(
    rf"\bas of (?:the )?(?:{_ISO.pattern}|{_ABSOLUTE.pattern}|{_YEAR.pattern})", re.IGNORECASE
)
_WHEN = re.compile(
    r"\b(when|what (?:date|day|time|year|month)|how long|which (?:year|month|day)|"
    r"how many (?:years|months|weeks|days))\b",
    re.IGNORECASE,
)
_DURATION = re.compile(
    r"\b(?:for|since) (?:the (?:past|last) )?(?:\d{1,3}|a couple of|a few|an|a|one|two|three|"
    r"four|five|six|seven|eight|nine|ten|several|many) (?:days?|weeks?|months?|years?)\b",
    re.IGNORECASE,
)
# Capitalised but everyday: sentence starts, greetings, pronouns, question words.
_COMMON = frozenset(
    """i i'm i've i'll i'd a an the this that these those it it's its he she they we you my your
    his her their our me him them us what when where who whom whose which why how is are was were
    do does did have has had will would can could should may might must be been being yes no not
    oh hey hi hello wow thanks thank great good nice cool awesome amazing sure okay ok well so but
    and or if then also just really very too that's there here there's let let's sounds yeah haha
    congrats congratulations sorry please love glad happy hope maybe definitely absolutely totally
    anyway btw by on in at for from with about after before during into of to up out over again
    all any some every each both many much more most other such only own same than now always never
    sometimes often today yesterday tomorrow tonight last next morning evening night week weekend
    monday tuesday wednesday thursday friday saturday sunday january february march april june july
    august september october november december mr mrs ms dr""".split()
)


def item_keys(content: str, created_at: datetime) -> list[str]:
    """Keys of one stored item: speaker, names, its own date and the dates its text mentions."""
    keys: set[str] = set(_date_keys(created_at.date()))
    speaker = _SPEAKER.match(content)
    body = content
    if speaker:
        keys.add(f"speaker:{speaker.group(1).lower()}")
        body = content[speaker.end() :]
    keys.update(f"name:{n}" for n in names(body))
    mentioned = mentioned_dates(body, created_at.date())
    for day, precision in mentioned:
        keys.update(_date_keys(day, precision))
    if mentioned or _YEAR.search(body) or _DURATION.search(body):
        keys.add("time")
    return sorted(keys)


@dataclass(frozen=True)
class QueryKeys:
    names: frozenset[str]
    dates: frozenset[str]  # date:/month:/year: keys the question names
    when: bool  # a "when" question: an answer is a time

    def all(self) -> list[str]:
        return sorted({f"name:{n}" for n in self.names} | {f"speaker:{n}" for n in self.names}
                      | self.dates)  # fmt: skip


def query_keys(question: str) -> QueryKeys:
    """The names, dates and kind of a question; its dates exactly as precise as written."""
    question = question[:20000]
    dates: set[str] = set()
    dated = _AS_OF.sub(" ", question)
    for year, month, day in _written(dated):
        if year is None:
            dates.add(f"moy:{month:02d}")
            continue
        day = day if day is not None and 1 <= day <= 31 else None  # out of range: the month
        dates.update(_date_keys(_safe_date(year, month, day or 15), _precision(day)))
    for match in _YEAR.finditer(dated):
        dates.add(f"year:{match.group(1)}")
    return QueryKeys(frozenset(names(question)), frozenset(dates), bool(_WHEN.search(question)))


def names(text: str) -> list[str]:
    """Proper nouns: capitalised words that are not everyday words, lowercased, possessive cut."""
    found: list[str] = []
    for match in _WORD.finditer(text[:20000]):
        word = match.group(0)
        if not word[0].isupper() or len(word) < 2:
            continue
        lower = word.lower()
        if lower.endswith("'s"):
            lower = lower[:-2]
        if lower not in _COMMON and lower not in found:
            found.append(lower)
    return found


def mentioned_dates(text: str, anchor: date) -> list[tuple[date, str]]:
    """Each date the text names, with how precisely (``day``, ``month`` or ``year``); a
    relative one, or one written without its year, resolved against ``anchor`` (the item's
    date)."""
    text = text[:20000]
    days = [found for m in _RELATIVE.finditer(text) if (found := _resolve(m, anchor))]
    for year, month, day in _written(text):
        if day is None or 1 <= day <= 31:
            days.append((_safe_date(year or anchor.year, month, day or 15), _precision(day)))
    return days


def _written(text: str) -> Iterator[tuple[int | None, int, int | None]]:
    """(year, month, day) of each date written out ("8 May 2023", "June", "2023-05-08"); year
    and day None where the text leaves them out. A day is as written: callers check its range."""
    for m in _ABSOLUTE.finditer(text):
        day, year = m.group(1) or m.group(3), m.group(4)
        if m.group(2).lower() == "may" and not (day or year):
            continue  # "may" alone is a verb far more often than a month
        month = _MONTHS[m.group(2).lower()]
        yield int(year) if year else None, month, int(day) if day else None
    for m in _ISO.finditer(text):
        if 1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3)) <= 31:
            yield int(m.group(1)), int(m.group(2)), int(m.group(3))


def _precision(day: int | None) -> str:
    return "month" if day is None else "day"


def _resolve(match: re.Match[str], anchor: date) -> tuple[date, str] | None:
    phrase = match.group(1).lower()
    if match.group(3):  # "<n> <unit>s ago"
        count, unit = match.group(2).lower(), match.group(3).lower().rstrip("s")
        n = int(count) if count.isdigit() else _NUMBERS.get(count, 1)
        precision = {"month": "month", "year": "year"}.get(unit, "day")
        return anchor - timedelta(days=n * _UNITS[unit]), precision
    if phrase in ("today", "tonight", "this morning"):
        return anchor, "day"
    if phrase in ("yesterday", "last night"):
        return anchor - timedelta(days=1), "day"
    when, unit = phrase.split(" ", 1)
    step = {"last": -1, "past": -1, "this": 0, "next": 1}[when]
    if unit in _WEEKDAYS:
        delta = _WEEKDAYS[unit] - anchor.weekday()
        if step < 0:
            delta = delta - 7 if delta >= 0 else delta
        elif step > 0:
            delta = delta + 7 if delta <= 0 else delta
        return anchor + timedelta(days=delta), "day"
    if unit in ("week", "weekend"):
        return anchor + timedelta(days=7 * step), "day"
    if unit == "month":
        month = anchor.month + step
        year = anchor.year + (month - 1) // 12
        return _safe_date(year, (month - 1) % 12 + 1, 15), "month"
    return _safe_date(anchor.year + step, 7, 1), "year"


def _date_keys(day: date, precision: str = "day") -> list[str]:
    keys = [f"year:{day:%Y}"]
    if precision != "year":
        keys += [f"month:{day:%Y-%m}", f"moy:{day:%m}"]
    return [f"date:{day:%Y-%m-%d}", *keys] if precision == "day" else keys


def _safe_date(year: int, month: int, day: int) -> date:
    for candidate in range(day, 27, -1):  # 31 February → 28 February
        try:
            return date(year, month, candidate)
        except ValueError:
            continue
    return date(year, month, min(day, 28))


__all__ = ["QueryKeys", "item_keys", "mentioned_dates", "names", "query_keys"]
