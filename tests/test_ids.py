"""Prefixed, time-ordered ids."""

from __future__ import annotations

import pytest

from quell.ids import id_prefix, new_id


def test_ids_carry_their_prefix_and_sort_by_time() -> None:
    earlier = new_id("run", now_ms=1_700_000_000_000)
    later = new_id("run", now_ms=1_700_000_000_001)
    assert earlier.startswith("run_")
    assert len(earlier) == len("run_") + 26
    assert earlier < later
    assert id_prefix(later) == "run"


def test_ids_are_unique() -> None:
    assert len({new_id("tok") for _ in range(10_000)}) == 10_000


@pytest.mark.parametrize("prefix", ["", "Run", "r", "with_underscore", "toolongprefix"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        new_id(prefix)
