"""Prefixed, time-ordered identifiers: ``tok_01jd…``, ``run_01jd…``, ``inc_01jd…``.

The prefix says what an id names, so a log line is readable on its own; the body is a ULID
(48 bits of milliseconds, 80 random bits, Crockford base32, lowercase), so ids sort by creation
time, which keeps B-tree inserts at the right edge of the index.
"""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A new id such as ``tok_01jdz3k8q3v7m2x9c4n6r5t8wa``."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"id prefix must match {_PREFIX.pattern}: {prefix!r}")
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    number = (ms << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        number, index = divmod(number, 32)
        chars.append(_ALPHABET[index])
    return f"{prefix}_{''.join(reversed(chars))}"


def id_prefix(identifier: str) -> str:
    """The prefix of an id made by :func:`new_id` (``"tok"`` for ``"tok_01…"``)."""
    prefix, sep, _ = identifier.partition("_")
    if not sep:
        raise ValueError(f"not a prefixed id: {identifier!r}")
    return prefix
