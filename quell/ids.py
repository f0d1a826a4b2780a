"""Prefixed, time-ordered identifiers: ``tok_01jd…``, ``run_01jd…``, ``inc_01jd…``.

The prefix says what an id names, so a log line is readable on its own; the body is a ULID
(48 bits of milliseconds, 80 random bits, Crockford base32, lowercase), so ids sort by creation
time, which keeps B-tree inserts at the right edge of the index.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from functools import cache

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")


@cache
def _checked(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(f"id prefix must match {_PREFIX.pattern}: {prefix!r}")
    return prefix + "_"


_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every 10-bit value as two digits
# The 26 digits are 13 ten-bit groups, the most significant first: the first 5 are exactly
# the 48 bits of milliseconds (and two zero bits), the other 8 exactly the 80 random bits.
_TIME_SHIFTS = (40, 30, 20, 10, 0)
_RANDOM_SHIFTS = (70, 60, 50, 40, 30, 20, 10, 0)
# Ids are unique, not secret (tokens and links carry their own secrets): a seeded PRNG.
_RANDOM = random.Random(os.urandom(32))  # noqa: S311
os.register_at_fork(after_in_child=lambda: _RANDOM.seed(os.urandom(32)))
_lock = threading.Lock()
_last = [0, 0]  # the last (ms, random part) handed out


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A new id such as ``tok_01jdz3k8q3v7m2x9c4n6r5t8wa``.

    Within one process ids are strictly increasing: a second id in the same millisecond takes
    the random part of the first plus one (a monotonic ULID), so ids sort in creation order.
    """
    head = _checked(prefix)
    if now_ms is None:
        ms = time.time_ns() // 1_000_000
        with _lock:
            if ms <= _last[0] and _last[1] < (1 << 80) - 1:
                ms, rand = _last[0], _last[1] + 1
            else:
                ms, rand = max(ms, _last[0] + (ms <= _last[0])), _RANDOM.getrandbits(80)
            _last[0], _last[1] = ms, rand
    else:
        ms, rand = now_ms, _RANDOM.getrandbits(80)
    # 128 bits (48 of time, 80 random) as 26 base32 digits: 130 bits, the first two zero.
    pairs = _PAIRS
    last = _time_text  # ids come many to a millisecond: its digits are written once
    if last[0] != ms:
        last = (ms, "".join([pairs[(ms >> shift) & 1023] for shift in _TIME_SHIFTS]))
        _set_time_text(last)
    return head + last[1] + "".join([pairs[(rand >> shift) & 1023] for shift in _RANDOM_SHIFTS])


_time_text: tuple[int, str] = (-1, "")


def _set_time_text(value: tuple[int, str]) -> None:
    global _time_text
    _time_text = value


def id_prefix(identifier: str) -> str:
    """The prefix of an id made by :func:`new_id` (``"tok"`` for ``"tok_01…"``)."""
    prefix, sep, _ = identifier.partition("_")
    if not sep:
        raise ValueError(f"not a prefixed id: {identifier!r}")
    return prefix
