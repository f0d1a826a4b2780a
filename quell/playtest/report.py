"""Test results as people read them: a line per case, and under a failed one, how it differs."""

from __future__ import annotations

from collections.abc import Sequence

from quell.playtest.runner import CaseResult


def case_lines(result: CaseResult) -> list[str]:
    """``PASS name`` or ``FAIL name`` and, indented under it, each difference."""
    lines = [f"  {'PASS' if result.passed else 'FAIL'}  {result.name}"]
    for failure in result.failures:
        lines.append(f"        {failure.message}")
        lines.extend(f"          {line}" for line in failure.diff)
    return lines


def summary(results: Sequence[CaseResult]) -> str:
    """``3 passed, 1 failed``."""
    passed = sum(1 for result in results if result.passed)
    failed = len(results) - passed
    text = f"{passed} passed"
    if failed:
        text += f", {failed} failed"
    return text


__all__ = ["case_lines", "summary"]
