"""Redaction before storage: secrets are always masked; emails, phones and cards on request.

What goes upstream is never changed by this module; only what memory keeps (``memory.store``
calls it on every item and on item metadata; ``workers.facts`` on extracted facts).

The patterns run on RE2 (``google-re2``), whose matching time is linear in the text by
construction: a backtracking engine (Python's ``re``) rescans from every failed start, and a
60 KB message of ``a.a.a…`` once held a gateway's event loop for 34 s. Possessive quantifiers
do not cure that (the cost is the number of start positions, not backtracking within one),
so no pattern here may need lookaround or backreferences; the few checks RE2 cannot express
(Luhn, "Basic" credentials that decode to ``user:password``) run on the match in Python.

Each rule masks its named group(s) ``s…`` (or the whole match) and keeps the words around it:
``DB_PASSWORD=[REDACTED_SECRET]``, ``postgres://app:[REDACTED_SECRET]@db/app``. The ``kind``
of each rule is the bounded label of ``cmg_redactions_total``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import re2

from core.metrics import REDACTIONS

SECRET = "[REDACTED_SECRET]"
_MASKS = ("[REDACTED_SECRET]", "[REDACTED_EMAIL]", "[REDACTED_PHONE]", "[REDACTED_CARD]")

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.max_mem = 32 << 20  # room for the DFA of the longer rules; past it RE2 stays linear

# Identifier endings that name a secret in an assignment: DB_PASSWORD=, client_secret:,
# "api_key": , AccountKey= (Azure connection strings), _authToken= (.npmrc) ...
_SECRET_NAME = (
    r"(?:password|passwd|passphrase|pwd|secret|token|api[_.\-]?key|access[_.\-]?key|"
    r"private[_.\-]?key|auth[_.\-]?key|signing[_.\-]?key|encryption[_.\-]?key|master[_.\-]?key|"
    r"credentials?|accountkey|sharedaccesskey)"
)
_PEM_BEGIN = r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
# Body and header lines, one by one (not "anything up to END": RE2 would then scan to the end
# of the text for every BEGIN, quadratic again). JSON-escaped line breaks count as breaks.
_PEM_BODY = (
    r"(?:(?:(?:\\[rn]|[\r\n])+[ \t]*| )"
    r"(?:[A-Za-z0-9+/]{8,}={0,2}|[A-Za-z0-9+/]{1,7}={1,2}|=[A-Za-z0-9+/]{4}|"
    r"(?:Proc-Type|DEK-Info|Comment|Version|Hash|Charset):[^\r\n\\]*))*"
    r"(?:(?:\\[rn]|[\r\n \t])*" + _PEM_END + ")?"
)


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: str
    check: Callable[[str], bool] | None = None  # extra test of the masked part RE2 can't do
    mask: str = SECRET


def _basic_credentials(token: str) -> bool:
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) >= 13 and total % 10 == 0


# Order matters: whole blocks and URLs first, so a token inside them is counted once.
_SECRET_RULES = (
    # PEM / OpenSSH / PGP private key blocks, with or without their END line
    Rule("private_key", _PEM_BEGIN + _PEM_BODY),
    # chat webhooks: the host stays readable, the path is the credential
    Rule(
        "chat",
        r"https://hooks\.slack\.com/(?P<s>(?:services|workflows|triggers)/"
        r"[A-Za-z0-9+/_\-]{20,})",
    ),
    Rule(
        "chat",
        r"https://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/api/webhooks/"
        r"(?P<s>\d+/[A-Za-z0-9_\-]{20,})",
    ),
    Rule("chat", r"https://[A-Za-z0-9\-]+\.webhook\.office\.com/(?P<s>webhookb2/[^\s\"'<>]{20,})"),
    Rule("chat", r"https://outlook\.office(?:365)?\.com/(?P<s>webhook/[^\s\"'<>]{20,})"),
    # signed URLs (Azure SAS, Logic Apps / Teams workflows, S3 and GCS presigned)
    Rule(
        "cloud",
        r"(?i)[?&](?:sig|signature|x-amz-signature|x-goog-signature)="
        r"(?P<s>[A-Za-z0-9%+/=_\-]{16,})",
    ),
    # connection strings and URL passwords; the password runs to the last '@' of the authority
    Rule("url_password", r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s:/@]*:(?P<s>[^\s/?#]+)@"),
    Rule("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{8,}"),
    # LLM providers and this gateway: sk-..., sk-proj-..., sk-ant-..., sk-or-v1-..., cmg_...
    Rule("llm", r"\b(?:sk|rk|pk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_\-]{16,}"),
    Rule("llm", r"\b(?:cmg|cmgm|gsk|xai)[_-][A-Za-z0-9_\-]{16,}"),
    Rule("llm", r"\b(?:hf_[A-Za-z]{30,}|r8_[A-Za-z0-9]{37}|pplx-[A-Za-z0-9]{40,})"),
    # cloud keys
    Rule("cloud", r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    Rule("cloud", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    Rule("cloud", r"\b[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}"),  # Azure AD client secret
    Rule("cloud", r"\b(?:do[por]_v1_[a-f0-9]{64}|dapi[a-f0-9]{32}(?:-\d)?|LTAI[A-Za-z0-9]{20})\b"),
    # OAuth tokens and client secrets
    Rule(
        "oauth",
        r"\b(?:ya29\.[0-9A-Za-z_\-]{20,}|GOCSPX-[A-Za-z0-9_\-]{28}|"
        r"1//0[A-Za-z0-9_\-]{40,})",
    ),
    # source hosting: GitHub, GitLab, Bitbucket / Atlassian
    Rule("vcs", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"),
    Rule(
        "vcs",
        r"\b(?:gl(?:pat|dt|ptt|rt|cbt|ft|imt|oas|soat|agent|ffct)-|GR1348941)"
        r"[A-Za-z0-9_\-]{20,}",
    ),
    Rule("vcs", r"\b(?:ATBB[A-Za-z0-9_=.\-]{28,}|ATATT3[A-Za-z0-9_=\-]{40,})"),
    # package registries: npm, PyPI, Docker Hub, RubyGems, NuGet, Artifactory
    Rule(
        "registry",
        r"\b(?:npm_[A-Za-z0-9]{36}|pypi-AgE[A-Za-z0-9_\-]{50,}|"
        r"dckr_pat_[A-Za-z0-9_\-]{27,}|rubygems_[a-f0-9]{48}|oy2[a-z0-9]{43}|"
        r"AKC[A-Za-z0-9]{10,}|cmVmdGtuOjAx[A-Za-z0-9]{44})\b",
    ),
    # payments: Stripe, Square, Braintree
    Rule(
        "payment",
        r"\b(?:(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,}|"
        r"sq0(?:atp|csp|idp)-[A-Za-z0-9_\-]{22,}|EAAA[A-Za-z0-9_\-+=]{60,}|"
        r"access_token\$production\$[a-z0-9]{16}\$[a-f0-9]{32})",
    ),
    # chat and messaging tokens: Slack, Discord bots, Telegram bots
    Rule("chat", r"\b(?:xox[abposre]-[A-Za-z0-9\-]{10,}|xapp-\d-[A-Za-z0-9\-]{10,})"),
    Rule("chat", r"\b[MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38}\b"),
    Rule("chat", r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b"),
    # other SaaS API keys: Twilio, SendGrid, Mailgun, Mailchimp, Shopify
    Rule(
        "saas",
        r"\b(?:SK[0-9a-fA-F]{32}|SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}|"
        r"key-[0-9a-z]{32}|[0-9a-f]{32}-us\d{1,2}|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})\b",
    ),
    # HTTP credentials
    Rule("http_auth", r"(?i)\bbearer\s+(?P<s>[A-Za-z0-9._\-~+/]{16,}=*)"),
    Rule("http_auth", r"(?i)\bbasic\s+(?P<s>[A-Za-z0-9+/]{8,}={0,2})", _basic_credentials),
    Rule(
        "http_auth",
        r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
        r"(?:(?:token|digest|apikey|key)\s+)?(?P<s>[A-Za-z0-9._\-~+/=:]{12,})",
    ),
    # NAME_PASSWORD=..., client_secret: "...", "api_key": '...', AccountKey=...;
    Rule(
        "assignment",
        r"(?i)[A-Za-z0-9_.\-]*" + _SECRET_NAME + r"[\"']?\s*(?::=|=>|[:=])\s*"
        r"(?:\"(?P<s1>[^\"\r\n]{4,})\"|'(?P<s2>[^'\r\n]{4,})'|"
        r"(?P<s3>[^\s,;\"'<>&()\[\]{}]{4,}))",
    ),
)
_PII_RULES = (
    Rule("card", r"\b(?:\d[ \-]?){12,18}\d\b", _luhn, "[REDACTED_CARD]"),
    Rule(
        "email", r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b", None, "[REDACTED_EMAIL]"
    ),
    Rule("phone", r"\+?\d[\d \-().]{7,}\d\b", None, "[REDACTED_PHONE]"),
)
KINDS = frozenset(r.kind for r in (*_SECRET_RULES, *_PII_RULES))
_SECRET_NAMED = re2.compile(r"(?i)" + _SECRET_NAME + r"$", _OPTIONS)


class _Compiled:
    """A rule with its RE2 program and the indexes of the groups it masks."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.regex = re2.compile(rule.pattern, _OPTIONS)
        self.masked = [i for name, i in self.regex.groupindex.items() if name.startswith("s")]

    def sub(self, text: str, counts: dict[str, int]) -> str:
        return self.regex.sub(lambda m: self._replace(m, counts), text)  # type: ignore[no-any-return]

    def _replace(self, match: Any, counts: dict[str, int]) -> str:
        whole: str = match.group(0)
        start, end = 0, len(whole)
        for group in self.masked:
            if match.start(group) >= 0:
                start, end = match.start(group) - match.start(), match.end(group) - match.start()
                break
        secret = whole[start:end]
        if secret in _MASKS or (self.rule.check is not None and not self.rule.check(secret)):
            return whole
        counts[self.rule.kind] = counts.get(self.rule.kind, 0) + 1
        return whole[:start] + self.rule.mask + whole[end:]


_SECRETS = [_Compiled(r) for r in _SECRET_RULES]
_PII = [_Compiled(r) for r in _PII_RULES]


def _any_of(rules: tuple[Rule, ...]) -> Any:
    """One program matching wherever any rule might: most texts hold no secret, and one scan
    answers that for them (~10 us) instead of a pass per rule."""
    bare = [re2.sub(r"\(\?P<\w+>", "(?:", r.pattern) for r in rules]
    return re2.compile("|".join(f"(?:{p})" for p in bare), _OPTIONS)


_ANY_SECRET = _any_of(_SECRET_RULES)
_ANY_PII = _any_of(_PII_RULES)


def redact(text: str, *, pii: bool = False, counted: bool = True) -> str:
    """``text`` with every secret (and with ``pii``, emails, phones, cards) masked.

    Linear in ``len(text)``; still CPU work (about 1 ms per 10 KB), so callers on the event
    loop run it in a thread. ``counted=False`` for redaction that stores nothing (hashing).
    """
    counts: dict[str, int] = {}
    if _ANY_SECRET.search(text) is not None:
        for rule in _SECRETS:
            text = rule.sub(text, counts)
    if pii and _ANY_PII.search(text) is not None:
        for rule in _PII:
            text = rule.sub(text, counts)
    if counted:
        for kind, n in counts.items():
            REDACTIONS.labels(kind).inc(n)
    return text


def redact_metadata(value: Any, *, pii: bool = False, name: str = "") -> Any:
    """Metadata with its string values redacted; a value whose key names a secret is masked
    whole (``{"db_password": "hunter2"}`` has no shape a pattern could recognise)."""
    if isinstance(value, str):
        if name and _SECRET_NAMED.search(name) and value and value not in _MASKS:
            REDACTIONS.labels("assignment").inc()
            return SECRET
        return redact(value, pii=pii)
    if isinstance(value, Mapping):
        return {k: redact_metadata(v, pii=pii, name=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_metadata(v, pii=pii, name=name) for v in value]
    return value
