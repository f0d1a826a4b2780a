"""The injectable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from quell.clock import SYSTEM_CLOCK, ManualClock


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    assert clock.now() == clock.now()
    assert clock.advance(timedelta(hours=2)) == datetime(2026, 5, 1, 14, 0, tzinfo=UTC)
    assert clock.monotonic() == 7200
    clock.advance(1.5)
    assert clock.monotonic() == 7201.5


def test_manual_clock_refuses_naive_times_and_going_back() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="forward"):
        ManualClock().advance(-1)


def test_system_clock_is_utc() -> None:
    assert SYSTEM_CLOCK.now().tzinfo == UTC
