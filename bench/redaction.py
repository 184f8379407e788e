"""Redaction speed on 64 KB inputs: ``python -m bench.redaction`` (figures for the README).

Ordinary prose, prose dense with secrets, and the hostile shapes that once stalled a gateway,
each through ``memory.redact.redact`` (secrets only, and with PII), plus the pre-RE2 URL
pattern on the worst shape for comparison. Prints one line per input; asserts nothing.
"""

from __future__ import annotations

import functools
import random
import re
import statistics
import time
from collections.abc import Callable

from memory.redact import redact

SIZE = 65_536
_WORDS = (
    "the meeting moved to Thursday and Priya prefers window seats while the deploy of "
    "version 2.4 waits for review at https://example.com/docs see ticket 4411"
).split()
_SECRETS = [
    "AKIAIOSFODNN7EXAMPLE",
    "postgres://app:s3cr3t-pw@db.internal:5432/app",
    "DB_PASSWORD=correct-horse-battery",
    "ghp_1A2b3C4d5E6f7G8h9I0j1K2l3M4n5O6p7Q8r",
    "Authorization: Bearer 0123456789abcdefXYZ.token",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dcEXAMPLE",
]


def _prose(rng: random.Random, secret_every: int = 0) -> str:
    words: list[str] = []
    while sum(map(len, words)) + len(words) < SIZE:
        dense = secret_every and len(words) % secret_every == 0
        words.append(rng.choice(_SECRETS) if dense else rng.choice(_WORDS))
    return " ".join(words)[:SIZE]


def _inputs() -> dict[str, str]:
    rng = random.Random(7)
    fill: Callable[[str], str] = lambda unit: (unit * (SIZE // len(unit) + 1))[:SIZE]  # noqa: E731
    return {
        "prose": _prose(rng),
        "prose, a secret every 20 words": _prose(rng, 20),
        "hostile: a.a.a...": fill("a."),
        "hostile: eyJ-eyJ-...": fill("eyJ-"),
        "hostile: BEGIN headers": fill("-----BEGIN RSA PRIVATE KEY-----x"),
        "hostile: password=password=...": fill("password="),
        "hostile: digits and spaces": fill("1 "),
    }


def _ms(work: Callable[[], object], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    print(f"redaction of {SIZE // 1024} KB inputs (median of 7 runs)")
    for name, text in _inputs().items():
        secrets = _ms(functools.partial(redact, text, counted=False))
        pii = _ms(functools.partial(redact, text, pii=True, counted=False))
        print(f"  {name:34} secrets {secrets:7.2f} ms   +pii {pii:7.2f} ms")
    old = re.compile(r"\b([a-z][a-z0-9+.\-]*://[^\s:/@]+):([^\s@/]+)@", re.IGNORECASE)
    hostile = _inputs()["hostile: a.a.a..."]
    print(f"  pre-RE2 URL pattern alone on a.a.a...: {_ms(lambda: old.sub('', hostile), 1):.0f} ms")


if __name__ == "__main__":
    main()
