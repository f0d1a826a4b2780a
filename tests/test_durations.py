"""Human durations."""

from __future__ import annotations

from datetime import timedelta

import pytest

from quell.durations import format_duration, parse_duration
from quell.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
    ],
)
def test_parses_and_formats_back(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("text", ["", "soon", "-5m", "5", "5 years", "1h-2m"])
def test_refuses_what_is_not_a_duration_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration(text, field="expires_in")
    assert caught.value.details["field"] == "expires_in"


def test_refuses_absurd_lengths() -> None:
    with pytest.raises(InvalidInput, match="ten years"):
        parse_duration("600w")
