"""What a case expected against what its run did: failures with readable differences."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quell import codec
from quell.playtest.cases import CallExpect, Expect
from quell.playtest.mocks import Call


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


MISSING: Any = _Missing()


@dataclass
class Failure:
    """One way a run differs from its case."""

    what: str  # status, path, vars.<name>, outputs.<step>, calls[<i>], mock, wait, error …
    message: str
    expected: Any = None
    actual: Any = None
    diff: list[str] = field(default_factory=list)  # path: "  a", "- b" (expected), "+ c" (ran)

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        data: dict[str, Any] = {"what": self.what, "message": self.message}
        if self.expected is not None:
            data["expected"] = self.expected
        if self.actual is not None and self.actual is not MISSING:
            data["actual"] = self.actual
        if self.diff:
            data["diff"] = self.diff
        return data


@dataclass
class StepResult:
    """The last record of a step in the run's journal."""

    status: str
    output: Any
    error: Any


@dataclass
class Observed:
    """What the run did."""

    status: str
    path: list[str]
    variables: dict[str, Any]
    steps: dict[str, StepResult]  # step id -> its last record
    error: dict[str, Any] | None
    calls: list[Call]


def show(value: Any) -> str:
    """A value as JSON text (``(missing)`` when absent)."""
    if value is MISSING:
        return "(missing)"
    try:
        return codec.dumps_str(value)
    except TypeError:
        return repr(value)


def same(expected: Any, actual: Any) -> bool:
    """Equal, where true is not 1 and 1 is 1.0."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


def differences(expected: Any, actual: Any, where: str) -> list[tuple[str, Any, Any]]:
    """Where ``actual`` does not hold ``expected``: mappings are matched as subsets, lists
    element by element, anything else by equality."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [(where, expected, actual)]
        found: list[tuple[str, Any, Any]] = []
        for key, value in expected.items():
            inner = f"{where}.{key}" if where else str(key)
            if key not in actual:
                found.append((inner, value, MISSING))
            else:
                found.extend(differences(value, actual[key], inner))
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [(where, expected, actual)]
        found = []
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            found.extend(differences(want, got, f"{where}[{index}]"))
        return found
    return [] if same(expected, actual) else [(where, expected, actual)]


def matches(expected: Any, actual: Any) -> bool:
    """Whether ``actual`` holds ``expected`` (see :func:`differences`)."""
    return not differences(expected, actual, "")


def path_diff(expected: Sequence[str], actual: Sequence[str]) -> list[str]:
    """The two paths aligned: ``  a`` in both, ``- b`` only expected, ``+ c`` only ran."""
    lines: list[str] = []
    matcher = difflib.SequenceMatcher(a=list(expected), b=list(actual), autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            lines.extend(f"  {step}" for step in expected[a1:a2])
            continue
        lines.extend(f"- {step}" for step in expected[a1:a2])
        lines.extend(f"+ {step}" for step in actual[b1:b2])
    return lines


def evaluate(expect: Expect, observed: Observed) -> list[Failure]:
    """Every way the run differs from ``expect``."""
    failures: list[Failure] = []
    if observed.status != expect.status:
        reason = ""
        if observed.error:
            reason = f" ({observed.error.get('message') or observed.error.get('code')})"
        failures.append(
            Failure(
                "status",
                f"status: expected {expect.status}, got {observed.status}{reason}",
                expect.status,
                observed.status,
            )
        )
    failures.extend(_path(expect, observed.path))
    for name, value in (expect.vars or {}).items():
        actual = observed.variables.get(name, MISSING)
        for where, want, got in differences(value, actual, f"vars.{name}"):
            failures.append(
                Failure(where, f"{where}: expected {show(want)}, got {show(got)}", want, got)
            )
    for step_id, value in (expect.outputs or {}).items():
        failures.extend(
            _output(step_id, value, observed.steps.get(step_id), step_id in observed.path)
        )
    if expect.error is not None:
        failures.extend(_error(expect.error, observed.error))
    for index, call in enumerate(expect.calls or []):
        failure = _call(index, call, observed.calls)
        if failure is not None:
            failures.append(failure)
    return failures


def _path(expect: Expect, path: list[str]) -> list[Failure]:
    failures: list[Failure] = []
    if expect.path is not None and list(expect.path) != path:
        failures.append(
            Failure(
                "path",
                "path: the steps run differ (- expected, + ran)",
                list(expect.path),
                path,
                path_diff(expect.path, path),
            )
        )
    if expect.path_includes:
        position = 0
        for step_id in expect.path_includes:
            try:
                position = path.index(step_id, position) + 1
            except ValueError:
                why = "ran, but not in that order" if step_id in path else "never ran"
                failures.append(
                    Failure(
                        "path_includes",
                        f"path_includes: {step_id!r} {why} (ran: {', '.join(path) or 'nothing'})",
                        list(expect.path_includes),
                        path,
                    )
                )
                break
    for step_id in expect.path_excludes or []:
        if step_id in path:
            failures.append(
                Failure(
                    "path_excludes",
                    f"path_excludes: {step_id!r} ran (ran: {', '.join(path)})",
                    list(expect.path_excludes or []),
                    path,
                )
            )
    return failures


def _output(step_id: str, value: Any, result: StepResult | None, ran: bool) -> list[Failure]:
    if result is None:
        why = "the step keeps no output" if ran else "the step never ran"
        return [Failure(f"outputs.{step_id}", f"outputs.{step_id}: {why}", value)]
    if result.status not in ("succeeded", "skipped"):
        message = (result.error or {}).get("message", result.status)
        return [
            Failure(
                f"outputs.{step_id}",
                f"outputs.{step_id}: the step {result.status} ({message}), so it has no output",
                value,
                result.error,
            )
        ]
    return [
        Failure(where, f"{where}: expected {show(want)}, got {show(got)}", want, got)
        for where, want, got in differences(value, result.output, f"outputs.{step_id}")
    ]


def _error(expected: str | dict[str, Any], actual: dict[str, Any] | None) -> list[Failure]:
    if actual is None:
        return [
            Failure("error", "error: expected the run to fail with an error; it has none", expected)
        ]
    if isinstance(expected, str):
        message = str(actual.get("message", ""))
        if expected in message:
            return []
        return [
            Failure(
                "error",
                f"error: expected a message containing {show(expected)}, got {show(message)}",
                expected,
                actual,
            )
        ]
    return [
        Failure(where, f"{where}: expected {show(want)}, got {show(got)}", want, got)
        for where, want, got in differences(expected, actual, "error")
    ]


def _describe(call: CallExpect) -> str:
    parts = []
    if call.action:
        parts.append(f"of {call.action}")
    if call.step:
        parts.append(f"by step {call.step!r}")
    if call.with_ is not None:
        parts.append(f"with {show(call.with_)}")
    return " ".join(parts)


def _call(index: int, expected: CallExpect, calls: list[Call]) -> Failure | None:
    candidates = [
        call
        for call in calls
        if (expected.action is None or call.action == expected.action)
        and (expected.step is None or call.step == expected.step)
    ]
    matching = [
        call
        for call in candidates
        if expected.with_ is None or matches(expected.with_, call.inputs)
    ]
    what = f"calls[{index}]"
    if expected.times is None:
        if matching:
            return None
        seen = "; ".join(f"{c.step}: {show(c.inputs)}" for c in candidates[:5])
        return Failure(
            what,
            f"{what}: expected a call {_describe(expected)}; "
            + (f"the calls made: {seen}" if candidates else "there was none"),
            expected.model_dump(by_alias=True, exclude_none=True),
            [call.inputs for call in candidates],
        )
    if len(matching) == expected.times:
        return None
    return Failure(
        what,
        f"{what}: expected {expected.times} call(s) {_describe(expected)}, got {len(matching)}",
        expected.times,
        len(matching),
    )


__all__ = [
    "MISSING",
    "Failure",
    "Observed",
    "StepResult",
    "differences",
    "evaluate",
    "matches",
    "path_diff",
    "same",
    "show",
]
