"""Redaction before storage: secrets are always masked; emails, phones and cards on request.

What goes upstream is never changed by this module; only what memory keeps.
"""

from __future__ import annotations

import re

_SECRETS = [
    # provider and gateway keys: sk-..., sk-proj-..., sk-or-v1-..., cmg_..., gsk_..., xai-...
    re.compile(r"\b(?:sk|rk|pk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\b(?:cmg|cmgm|gsk|ghp|gho|ghu|ghs|ghr|glpat|xox[abprs])[_-][A-Za-z0-9_\-]{16,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),  # JWT
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-~+/]{16,}=*"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
]
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.\-]*://[^\s:/@]+):([^\s@/]+)@", re.IGNORECASE)
_ASSIGNED = re.compile(
    r"(?i)\b((?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|token)\s*[:=]\s*)"
    r"(\"[^\"]{4,}\"|'[^']{4,}'|[^\s,;\"']{4,})"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d \-().]{7,}\d(?!\w)")
_CARD = re.compile(r"\b(?:\d[ \-]?){12,18}\d\b")

SECRET = "[REDACTED_SECRET]"


def redact(text: str, *, pii: bool = False) -> str:
    for pattern in _SECRETS:
        text = pattern.sub(SECRET, text)
    text = _URL_PASSWORD.sub(rf"\1:{SECRET}@", text)
    text = _ASSIGNED.sub(rf"\1{SECRET}", text)
    if pii:
        text = _CARD.sub(_card, text)
        text = _EMAIL.sub("[REDACTED_EMAIL]", text)
        text = _PHONE.sub("[REDACTED_PHONE]", text)
    return text


def _card(match: re.Match[str]) -> str:
    digits = [int(c) for c in match.group(0) if c.isdigit()]
    return "[REDACTED_CARD]" if _luhn(digits) else match.group(0)


def _luhn(digits: list[int]) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) >= 13 and total % 10 == 0
