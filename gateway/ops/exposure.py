"""Before ``cmg serve`` listens: a gateway other machines can reach needs a master key that
cannot be guessed.

On loopback (``127.0.0.1``, ``::1``, ``localhost``: the default, ``make run``, tests) any key
is accepted. On any other address the master key, when set, must be at least 32 characters
with at least 90 bits of character entropy, and not the public one from ``.env.example``;
otherwise ``cmg serve`` exits non-zero before starting anything, saying why and how to fix it.
An unset master key is fine anywhere: the admin API is then closed.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter

# Published in .env.example (a test keeps the two equal): whoever reads the repo knows it.
EXAMPLE_MASTER_KEY = "cmg_master_local_only_change_me"
MIN_LENGTH = 32
MIN_BITS = 90
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a hostname or 0.0.0.0 / :: (every interface)


def weakness(key: str) -> str | None:
    """Why ``key`` is guessable, or None."""
    if key == EXAMPLE_MASTER_KEY:
        return "it is the example key published in .env.example"
    if len(key) < MIN_LENGTH:
        return f"it is {len(key)} characters long (at least {MIN_LENGTH} needed)"
    if entropy_bits(key) < MIN_BITS:
        return f"its characters carry about {entropy_bits(key):.0f} bits (at least {MIN_BITS})"
    return None


def entropy_bits(key: str) -> float:
    """Shannon entropy of the key's characters times its length: a repeated word or a run of
    one character scores low, 32 random hex characters score 95-125, base64 ones 140-190."""
    counts = Counter(key)
    return -len(key) * sum(n / len(key) * math.log2(n / len(key)) for n in counts.values())


def check_master_key(master_key: str, host: str) -> None:
    """Exit with a message when a guessable master key would be served beyond loopback."""
    if not master_key or is_loopback(host):
        return
    reason = weakness(master_key)
    if reason is None:
        return
    raise SystemExit(
        f"cmg serve: refusing to listen on {host}: CMG_MASTER_KEY is too weak ({reason}). "
        "Anyone who reaches the gateway could use the admin API. Set a random key, e.g. "
        "python -c \"import secrets; print('cmg_master_' + secrets.token_urlsafe(32))\", "
        "or listen on 127.0.0.1 only."
    )
