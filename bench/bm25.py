"""The recall eval's baseline: plain Okapi BM25 over the same turns, in-process.

What any memory should beat: k1 = 1.2, b = 0.75, lowercased words, English stop words removed,
no stemming, no synonyms, no context. One ``Index`` per end user, as the product scopes its
search; the eval ranks each question's turns with it beside the product's HTTP answers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

K1 = 1.2
B = 0.75

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# The usual English list (as in NLTK and the Snowball stop list), contractions included.
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each few for from further had hadn't has hasn't have haven't
    having he he'd he'll he's her here here's hers herself him himself his how how's i i'd i'll
    i'm i've if in into is isn't it it's its itself just let's me more most mustn't my myself no
    nor not now of off on once only or other ought our ours ourselves out over own same shan't
    she she'd she'll she's should shouldn't so some such than that that's the their theirs them
    themselves then there there's these they they'd they'll they're they've this those through
    to too under until up very was wasn't we we'd we'll we're we've were weren't what what's
    when when's where where's which while who who's whom why why's will with won't would
    wouldn't you you'd you'll you're you've your yours yourself yourselves""".split()
)


def words(text: str) -> list[str]:
    """Lowercased words, stop words out (curly apostrophes read as straight ones)."""
    found = _WORD.findall(text.lower().replace("\u2019", "'"))
    return [w for w in found if w not in STOP_WORDS]


class Index:
    """BM25 over a fixed list of (key, text) documents."""

    def __init__(self, docs: Iterable[tuple[str, str]]) -> None:
        self._keys: list[str] = []
        self._terms: list[Counter[str]] = []
        for key, text in docs:
            self._keys.append(key)
            self._terms.append(Counter(words(text)))
        lengths = [sum(t.values()) for t in self._terms]
        self._norm = [1.0 - B + B * n / (sum(lengths) / len(lengths) or 1.0) for n in lengths]
        df: Counter[str] = Counter(w for t in self._terms for w in t)
        n = len(self._terms)
        self._idf = {w: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}

    def search(self, query: str, k: int) -> list[str]:
        """The keys of the k best documents sharing a word with the query, best first."""
        terms = [w for w in dict.fromkeys(words(query)) if w in self._idf]
        scored: list[tuple[float, int]] = []
        for i, tf in enumerate(self._terms):
            score = sum(
                self._idf[w] * tf[w] * (K1 + 1) / (tf[w] + K1 * self._norm[i])
                for w in terms
                if w in tf
            )
            if score > 0:
                scored.append((-score, i))
        scored.sort()
        return [self._keys[i] for _, i in scored[:k]]


def indexes(docs: Sequence[tuple[str, str, str]]) -> dict[str, Index]:
    """One index per end user, from (user, key, text) rows."""
    by_user: dict[str, list[tuple[str, str]]] = {}
    for user, key, text in docs:
        by_user.setdefault(user, []).append((key, text))
    return {user: Index(rows) for user, rows in by_user.items()}
