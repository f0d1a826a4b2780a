"""Human durations (``30s``, ``15m``, ``24h``, ``7d``, ``2w``, or ``1h30m``) as timedeltas."""

from __future__ import annotations

import re
from datetime import timedelta

from quell.errors import InvalidInput

_PART = re.compile(r"(\d{1,9})\s*(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"^\s*(?:\d{1,9}\s*(?:ms|s|m|h|d|w)\s*){1,8}$")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
MAX_DURATION = timedelta(days=3660)


def parse_duration(text: str, *, field: str = "duration") -> timedelta:
    """Parse ``text``; InvalidInput names ``field`` when it is not a duration."""
    if not _WHOLE.match(text):
        raise InvalidInput(
            f"{field}: {text!r} is not a duration; use e.g. 30s, 15m, 24h, 7d, 2w or 1h30m",
            field=field,
            value=text,
        )
    try:
        total = sum(
            (int(amount) * _UNITS[unit] for amount, unit in _PART.findall(text)), timedelta(0)
        )
    except OverflowError:  # beyond what a timedelta holds: certainly too long
        total = MAX_DURATION + timedelta(days=1)
    if total > MAX_DURATION:
        raise InvalidInput(f"{field}: {text!r} is longer than ten years", field=field, value=text)
    return total


def format_duration(value: timedelta) -> str:
    """The shortest exact rendering: ``timedelta(hours=36)`` gives ``1d12h``."""
    millis = round(value.total_seconds() * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = round(_UNITS[unit].total_seconds() * 1000)
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
