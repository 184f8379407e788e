"""Redaction (memory.redact): every secret family masked with the words around it kept, and
linear time on hostile shapes generated from each family (work at n vs 8n, never a clock bound).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from memory.redact import KINDS, SECRET, redact, redact_metadata

_PEM_BODY = (
    "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9OiJjRazXBZ1BjP5CE/Wm/Rr500P\n"
    "RK+Lh9x5eJPo5CAZ3/ANBE0sTK0ZsDGMak2m1g7wCEXAMPLEFAKEKEYONLY000\n"
    "abc=\n"
)
# family -> (kind, fake secret as it would be pasted, the part that must disappear)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "aws access key id": ("cloud", "AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    "aws secret key": (
        "assignment",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    "gcp api key": ("cloud", "AIzaSyA1bCdEfGhIjKlMnOpQrStUvWxYz0123-_", "AIzaSyA1bCdEfGh"),
    "gcp oauth client secret": ("oauth", "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", "GOCSPX-1a2B3c4D"),
    "google oauth access token": ("oauth", "ya29.a0AfH6SMBxEXAMPLEtokenVALUE123456", "a0AfH6SMB"),
    "azure ad client secret": (
        "cloud",
        "abc8Q~Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE",
        "abc8Q~Zx9yW8vU7tS6rQ5p",
    ),
    "azure storage connection string": (
        "assignment",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Zm9vYmFyYmF6cXV4EXAMPLE==;",
        "Zm9vYmFyYmF6cXV4EXAMPLE",
    ),
    "azure sas url": (
        "cloud",
        "https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sig=AbCdEfGh1234567890%2BxyzEXAMPLE%3D",
        "AbCdEfGh1234567890",
    ),
    "github pat (classic)": ("vcs", "ghp_1A2b3C4d5E6f7G8h9I0j1K2l3M4n5O6p7Q8r", "ghp_1A2b3C4d"),
    "github pat (fine-grained)": (
        "vcs",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456",
        "github_pat_11ABCDEFG",
    ),
    "github oauth token": ("vcs", "gho_16C7e42F292c6912E7710c838347Ae178B4a", "gho_16C7e42F"),
    "gitlab pat": ("vcs", "glpat-xYz1234567890abcdEFGH", "glpat-xYz123"),
    "bitbucket app password": ("vcs", "ATBB3xyzEXAMPLE9aBcDeFgHiJkLmNoPqRsT", "ATBB3xyzEXAMPLE"),
    "npm token": ("registry", "npm_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "npm_aBcDeFgH"),
    "pypi token": (
        "registry",
        "pypi-AgEIcHlwaS5vcmcCJGFiY2RlZmdoLWlqa2wtbW5vcC1xcnN0LXV2d3h5ejAxMjM0NTY3OAACKlsz",
        "pypi-AgEIcHlwaS5vcmcCJGF",
    ),
    "docker hub pat": ("registry", "dckr_pat_aBcDeFgHiJkLmNoPqRsTuVwXyZ01", "dckr_pat_aBcDe"),
    "stripe secret key": ("payment", "sk_live_4eC39HqLyjWDarjtT1zdp7dcEXAMPLE", "4eC39HqLyjWD"),
    "stripe restricted key": ("payment", "rk_test_51H8aBcDeFgHiJkLmNoPqRsT", "51H8aBcDeFg"),
    "stripe webhook secret": ("payment", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYq"),
    "square access token": (
        "payment",
        "sq0atp-aBcDeFgHiJkLmNoPqRsTuV12",
        "sq0atp-aBcDeFgH",
    ),
    "square oauth secret": ("payment", "sq0csp-aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789ab", "sq0csp"),
    "slack bot token": (
        "chat",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "xoxb-1",
    ),
    "slack webhook": (
        "chat",
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "T00000000/B00000000",
    ),
    "discord webhook": (
        "chat",
        "https://discord.com/api/webhooks/123456789012345678/AbCdEfGhIjKlMnOpQrStUvWxYz-0123456789",
        "AbCdEfGhIjKlMnOp",
    ),
    "discord bot token": (
        "chat",
        "MTA1OTk3NjU0MzIxMDk4NzY1NA.GhIjKl.AbCdEfGhIjKlMnOpQrStUvWxYz0123456",
        "MTA1OTk3NjU0MzIx",
    ),
    "teams webhook": (
        "chat",
        "https://contoso.webhook.office.com/webhookb2/a1b2c3d4-e5f6@72f9/IncomingWebhook/abcdef0123",
        "a1b2c3d4-e5f6",
    ),
    "telegram bot token": ("chat", "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0", "AAHdqTcvCH1"),
    "openai key": ("llm", "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "AbCdEfGhIjKl"),
    "anthropic key": ("llm", "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz012345", "AbCdEfGhIjKl"),
    "openrouter key": ("llm", "sk-or-v1-0123456789abcdef0123456789abcdef", "0123456789abcdef"),
    "gateway key": ("llm", "cmg_AbCdEfGhIjKlMnOpQrStUvWx", "AbCdEfGhIjKl"),
    "hugging face token": ("llm", "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", "hf_AbCdEfGh"),
    "sendgrid key": (
        "saas",
        "SG.aBcDeFgHiJkLmNoPqRsTuV.aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789aBcDeFg",
        "aBcDeFgHiJkLmNoPqRsTuV",
    ),
    "twilio api key": ("saas", "SK0123456789abcdef0123456789abcdef", "SK0123456789abcdef"),
    "jwt": (
        "jwt",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "dozjgNryP4J3",
    ),
    "http bearer": (
        "http_auth",
        "Authorization: Bearer 0123456789abcdefXYZ.token",
        "0123456789abc",
    ),
    "http basic": ("http_auth", "Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l", "YWxhZGRpbjpv"),
    "authorization token": (
        "http_auth",
        "Authorization: Token 9944b09199c62bcf9418ad846dd0e4bb",
        "9944b",
    ),
    "postgres url": ("url_password", "postgres://app:s3cr3t-pw@db.internal:5432/app", "s3cr3t-pw"),
    "url password with @": ("url_password", "redis://:p@ss@w0rd!@cache.internal:6379/0", "p@ss"),
    "mongodb srv url": (
        "url_password",
        "mongodb+srv://admin:Adm1nPa55@cluster0.mongodb.net/x",
        "Adm1n",
    ),
    "env password": ("assignment", "DB_PASSWORD=correct-horse-battery", "correct-horse-battery"),
    "env token": ("assignment", "GITLAB_TOKEN='abc123def456'", "abc123def456"),
    "client secret": ("assignment", "client_secret=Xy9-aBcD.eFgH_1234", "Xy9-aBcD.eFgH_1234"),
    "json api key": ("assignment", '{"api_key": "3f2a9c8d7e6b5a41"}', "3f2a9c8d7e6b5a41"),
    "yaml secret": ("assignment", "webhook_secret: 8d7f6e5c4b3a2910", "8d7f6e5c4b3a2910"),
    "rsa private key": (
        "private_key",
        "-----BEGIN RSA PRIVATE KEY-----\n" + _PEM_BODY + "-----END RSA PRIVATE KEY-----",
        "MIIEpAIBAAKCAQEA3Tz2mr7",
    ),
    "openssh key without end": (
        "private_key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMw\n"
        "AAAAtzc2gtZWQyNTUxOQAAACBkZXZpY2U=",
        "b3BlbnNzaC1rZXktdjEAAAAA",
    ),
    "pgp private key": (
        "private_key",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n"
        "lQOYBF0EXAMPLEBACADFAKEKEYDATA\n"
        "=AbCd\n-----END PGP PRIVATE KEY BLOCK-----",
        "lQOYBF0EXAMPLE",
    ),
    "private key in json": (
        "private_key",
        '"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC'
        '\\n-----END PRIVATE KEY-----\\n"',
        "MIIEvQIBADANBgkqhkiG9w0",
    ),
}


def _count(kind: str) -> float:
    return REGISTRY.get_sample_value("cmg_redactions_total", {"kind": kind}) or 0.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_secret_family_is_masked_and_the_words_around_kept(family: str) -> None:
    kind, value, secret = FAMILIES[family]
    before = _count(kind)
    text = f"Before the secret {value} after the secret."
    out = redact(text)
    assert secret not in out, out
    assert SECRET in out
    assert out.startswith("Before the secret ") and out.endswith(" after the secret."), out
    assert _count(kind) > before, f"{kind} not counted"


def test_plain_prose_is_left_alone() -> None:
    prose = (
        "A basic understanding of the token budget helps: max_tokens: 1024, the password policy "
        "says twelve characters, and the key = value pairs go in settings.toml. "
        "Ping me at standup; https://example.com/docs/auth is the page."
    )
    assert redact(prose) == prose


def test_url_password_with_at_sign_is_masked_whole() -> None:
    out = redact("use postgres://app:p@ss:w0rd@db.example.com:5432/app now")
    assert out == f"use postgres://app:{SECRET}@db.example.com:5432/app now"


def test_pii_masked_only_on_request() -> None:
    text = "mail bob@example.com or call +1 (555) 123-4567, card 4111 1111 1111 1111."
    assert redact(text) == text
    out = redact(text, pii=True)
    assert "bob@example.com" not in out and "555" not in out and "4111" not in out
    assert out.startswith("mail ") and out.endswith(".")
    assert "[REDACTED_CARD]" not in redact("order 4111 1111 1111 1112", pii=True)  # not Luhn


def test_metadata_values_are_redacted_keys_kept() -> None:
    metadata = {
        "source": "ops notes",
        "db_password": "hunter2",
        "nested": {"env": ["DB_PASSWORD=correct-horse-battery", 3]},
        "token_count": 12,
    }
    out = redact_metadata(metadata)
    assert out["source"] == "ops notes" and out["token_count"] == 12
    assert out["db_password"] == SECRET
    assert out["nested"]["env"] == [f"DB_PASSWORD={SECRET}", 3]


def test_kinds_are_a_small_fixed_set() -> None:
    assert {kind for kind, _, _ in FAMILIES.values()} <= KINDS
    assert len(KINDS) <= 20


# --- linear time ---------------------------------------------------------------------------


def _shapes(value: str) -> dict[str, Callable[[int], str]]:
    """Adversarial shapes built from one family's value: the kinds of input that make a
    backtracking engine rescan from every start (prefixes without an end, near misses)."""
    cut = max(4, len(value) // 2)
    broken = value[:-1] + "\u00e9"
    return {
        "repeated": lambda n: (value * (n // len(value) + 1))[:n],
        "prefix, no end": lambda n: (value[:cut] * (n // cut + 1))[:n],
        "near misses": lambda n: ((broken + " ") * (n // (len(broken) + 1) + 1))[:n],
        "separators": lambda n: (re.sub(r"[A-Za-z0-9]", "a.", value) * n)[:n],
    }


_GENERIC = {
    "a.": "a.",
    "word run": "a",
    "digits and spaces": "1 ",
    "begin headers": "-----BEGIN RSA PRIVATE KEY-----x",
    "scheme colons": "x://a:",
    "assignments": "password=",
    "at signs": "a@a.",
    "jwt starts": "eyJ-",
    "bearer": "bearer ",
}


def _work(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        redact(text, pii=True, counted=False)
        best = min(best, time.process_time() - started)
    return best


def _assert_linear(make: Callable[[int], str]) -> None:
    n = 16_384
    ratios = []
    for _ in range(3):  # CPU time, not wall time; noise only inflates a ratio: retry
        small, large = _work(make(n)), _work(make(8 * n))
        ratios.append(large / max(small, 2e-4))
        # Linear work grows ~8x; a quadratic pattern grows ~64x. The floor keeps timer noise out.
        if ratios[-1] < 32:
            return
    raise AssertionError(f"work grew {min(ratios):.0f}x for 8x the text")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_redaction_is_linear_on_shapes_of_each_family(family: str) -> None:
    for shape, make in _shapes(FAMILIES[family][1]).items():
        try:
            _assert_linear(make)
        except AssertionError as exc:
            raise AssertionError(f"{family}: {shape}: {exc}") from exc


@pytest.mark.parametrize("unit", sorted(_GENERIC))
def test_redaction_is_linear_on_generic_hostile_shapes(unit: str) -> None:
    _assert_linear(lambda n: (_GENERIC[unit] * (n // len(_GENERIC[unit]) + 1))[:n])


def test_old_backtracking_pattern_is_quadratic_on_the_same_shape() -> None:
    """The test above can fail: the pre-RE2 URL pattern on ``a.a.a…`` grows ~64x."""
    old = re.compile(r"\b([a-z][a-z0-9+.\-]*://[^\s:/@]+):([^\s@/]+)@", re.IGNORECASE)

    def work(n: int) -> float:
        started = time.process_time()
        old.sub("", "a." * (n // 2))
        return time.process_time() - started

    assert work(16_000) / max(work(2_000), 2e-4) > 32
