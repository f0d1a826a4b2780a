"""Prefixed, time-ordered identifiers: ``tok_01jd…``, ``run_01jd…``, ``inc_01jd…``.

The prefix says what an id names, so a log line is readable on its own; the body is a ULID
(48 bits of milliseconds, 80 random bits, Crockford base32, lowercase), so ids sort by creation
time, which keeps B-tree inserts at the right edge of the index.
"""

from __future__ import annotations

import base64
import os
import re
import time
from functools import cache

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
# base64's base32 alphabet, mapped onto Crockford's, so that the C encoder does the work.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")


@cache
def _checked(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(f"id prefix must match {_PREFIX.pattern}: {prefix!r}")
    return prefix + "_"


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A new id such as ``tok_01jdz3k8q3v7m2x9c4n6r5t8wa``."""
    head = _checked(prefix)
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    # 128 bits (48 of time, 80 random) as 26 base32 digits (130 bits, the first two zero):
    # left-aligned in 17 bytes, the first 26 digits of their base32 are exactly those bits.
    raw = (((ms << 80) | int.from_bytes(os.urandom(10))) << 6).to_bytes(17, "big")
    digits = base64.b32encode(raw)[:26].translate(_TO_CROCKFORD).decode()
    return head + digits


def id_prefix(identifier: str) -> str:
    """The prefix of an id made by :func:`new_id` (``"tok"`` for ``"tok_01…"``)."""
    prefix, sep, _ = identifier.partition("_")
    if not sep:
        raise ValueError(f"not a prefixed id: {identifier!r}")
    return prefix
