"""The internal representation (IR) every playbook compiles to, whatever it was written in.

A playbook is a flat map of steps by id, as in CACAO 2.0, and control flows along edges:

- every step may name ``on_success``, ``on_failure`` and ``on_completion``; after a step
  succeeds the run follows ``on_success``, else ``on_completion``; after it fails,
  ``on_failure``, else ``on_completion`` when that was given (the failure is then handled),
  else the failure travels up;
- a *branch* starts at a step and runs until a step with nowhere to go (no edge, or an
  ``end`` step); control then returns to the step that opened the branch. ``if`` opens one of
  two branches, ``switch`` one of several, ``while`` its body while the condition holds (never
  more than ``max_iterations`` times), ``parallel`` all its branches at once and joins them,
  ``for_each`` its body once per item (at most ``concurrency`` at a time), and ``playbook``
  runs another playbook, by id and version, as a child run;
- the playbook's entry is ``start``; ``on_exception`` names a step that runs when a failure
  reaches the top, before the run ends failed.

Expressions and templates are kept as source text: the IR is plain data that serializes to
JSON (and back) unchanged, so a run can pin exactly the version it started with.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import orjson


class StepKind(StrEnum):
    """What a step does."""

    ACTION = "action"  # call a connector action
    SET = "set"  # assign variables
    IF = "if"
    SWITCH = "switch"
    WHILE = "while"
    PARALLEL = "parallel"
    FOR_EACH = "for_each"
    PLAYBOOK = "playbook"  # a sub-playbook, by id and version
    WAIT = "wait"  # approval, manual task, timer or external event
    FAIL = "fail"  # end the branch failed, with a message
    END = "end"  # end the branch


class WaitKind(StrEnum):
    """What a wait step waits for."""

    APPROVAL = "approval"
    TASK = "task"  # a manual task a person completes
    TIMER = "timer"
    EVENT = "event"  # a callback URL with a one-time token


class ExpiryOutcome(StrEnum):
    """What happens when a wait expires."""

    SKIP = "skip"  # the step is skipped and the run goes on
    FAIL = "fail"  # the step fails (on_failure, or the failure travels up)
    ESCALATE = "escalate"  # the wait is handed on (e.g. a wider approver group), and waits again


@dataclass(frozen=True)
class Position:
    """Where something was written: file, line and column (1-based), when the source has them."""

    file: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [self.file or "<playbook>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)


@dataclass(frozen=True)
class Retry:
    """Retries of a failed action: exponential backoff with full jitter, capped."""

    max_attempts: int = 1  # 1: no retry
    initial: float = 1.0  # seconds before the second attempt
    maximum: float = 300.0
    multiplier: float = 2.0


@dataclass(frozen=True)
class Wait:
    """What a wait step waits for and how it ends if nobody answers."""

    kind: WaitKind
    prompt: str | None = None  # the question or task text (a template)
    duration: float | None = None  # timer: seconds
    until: str | None = None  # timer: a template giving a time
    expires_in: float | None = None  # approval/task/event: seconds until it expires
    on_expiry: ExpiryOutcome = ExpiryOutcome.FAIL
    approvers: tuple[str, ...] = ()  # roles that may decide an approval


@dataclass(frozen=True)
class Step:
    """One step of the flat step map."""

    id: str
    kind: StepKind
    name: str | None = None
    description: str | None = None
    # Edges.
    on_success: str | None = None
    on_failure: str | None = None
    on_completion: str | None = None
    # Timing and retries.
    delay: float | None = None  # seconds to wait before the step starts
    timeout: float | None = None  # seconds the step may take (an action's call, a branch)
    retry: Retry = field(default_factory=Retry)
    # Variables: this step's own (visible to its expressions, shadowing the playbook's) and
    # the playbook variables it writes back when it succeeds (name -> template).
    variables: dict[str, Any] = field(default_factory=dict)
    out: dict[str, Any] = field(default_factory=dict)
    # action
    action: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    approval: bool = False  # the step asks for an approval before it runs
    # set
    assign: dict[str, Any] = field(default_factory=dict)
    # if / while / switch
    condition: str | None = None
    on_true: str | None = None  # if: branch start; while: the body
    on_false: str | None = None
    switch: str | None = None  # switch: the value
    cases: dict[str, str] = field(default_factory=dict)  # switch: value -> branch start
    default: str | None = None  # switch: branch when no case matches
    max_iterations: int | None = None  # while
    # parallel
    branches: tuple[str, ...] = ()
    # for_each
    items: Any = None  # a template giving a list, or a list
    item_name: str = "item"
    body: str | None = None
    concurrency: int = 1
    # playbook
    playbook: str | None = None
    version: int | None = None  # None: the latest published
    # wait
    wait: Wait | None = None
    # fail
    message: str | None = None
    # where it was written
    position: Position = field(default_factory=Position)
    # action: the connector instance it runs against (None: the connector's default) and the
    # stored credential (a CACAO authentication info, sealed) whose secrets it is called with
    instance: str | None = None
    credential: str | None = None
    # kept from imports (CACAO step type, commands, agent, targets...): export writes them back
    extensions: dict[str, Any] = field(default_factory=dict)

    def branch_starts(self) -> list[str]:
        """The branches this step opens (each runs to its own end, then control returns)."""
        starts: list[str | None] = []
        if self.kind is StepKind.IF:
            starts = [self.on_true, self.on_false]
        elif self.kind is StepKind.WHILE:
            starts = [self.on_true]
        elif self.kind is StepKind.SWITCH:
            starts = [*self.cases.values(), self.default]
        elif self.kind is StepKind.PARALLEL:
            starts = list(self.branches)
        elif self.kind is StepKind.FOR_EACH:
            starts = [self.body]
        return [start for start in starts if start]

    def edges(self) -> list[str]:
        """The steps that may follow this one in its own branch."""
        return [edge for edge in (self.on_success, self.on_failure, self.on_completion) if edge]


@dataclass(frozen=True)
class Variable:
    """A playbook variable: its type, initial value, and whether it is a run input."""

    name: str
    type: str = "any"  # any, string, integer, number, boolean, list, object
    value: Any = None
    description: str | None = None
    external: bool = False  # a run input (CACAO ``external``)
    required: bool = False  # an input the run must be given
    constant: bool = False  # may not be assigned


@dataclass(frozen=True)
class Trigger:
    """When the playbook starts by itself."""

    on: str  # alert.created, incident.created, incident.updated, incident.sla_breached, ...
    condition: str | None = None
    cron: str | None = None  # schedule
    timezone: str = "UTC"


@dataclass(frozen=True)
class Playbook:
    """A compiled playbook."""

    id: str
    name: str
    version: int
    start: str
    steps: dict[str, Step]
    description: str | None = None
    variables: dict[str, Variable] = field(default_factory=dict)
    triggers: tuple[Trigger, ...] = ()
    on_exception: str | None = None
    timeout: float | None = None  # seconds the whole run may take
    source_format: str = "yaml"  # yaml, cacao
    file: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)  # kept from imports, unused here
    # The TLP level its data is marked with (CACAO data markings): at TLP:RED and
    # TLP:AMBER+STRICT no action sends it outside the organization.
    tlp: str | None = None

    def to_json(self) -> bytes:
        """The IR as JSON (what a run pins)."""
        return orjson.dumps(asdict(self))

    def digest(self) -> str:
        """What identifies this content: see :func:`content_digest`."""
        return content_digest(self.to_json())

    @classmethod
    def from_json(cls, data: bytes | str) -> Playbook:
        """The IR from :meth:`to_json`."""
        raw = orjson.loads(data)
        steps = {key: step_from_dict(value) for key, value in raw.pop("steps").items()}
        variables = {key: Variable(**value) for key, value in raw.pop("variables").items()}
        triggers = tuple(Trigger(**value) for value in raw.pop("triggers"))
        return cls(steps=steps, variables=variables, triggers=triggers, **raw)


def content_digest(ir: bytes | str) -> str:
    """SHA-256 of an IR (:meth:`Playbook.to_json`) without the name of the file it was read
    from, at the top and in each step's position. The same text added from another folder,
    under another path, or through the API without one, is the same content (and the same
    version); lines and columns come from the text itself and stay in.

    Migration 0024 holds a copy of this: change the two together."""
    document = orjson.loads(ir)
    document["file"] = None
    for step in document.get("steps", {}).values():
        position = step.get("position")
        if isinstance(position, dict):
            position["file"] = None
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def step_from_dict(raw: dict[str, Any]) -> Step:
    """A step from its :func:`dataclasses.asdict` form."""
    raw = dict(raw)
    raw["kind"] = StepKind(raw["kind"])
    raw["retry"] = Retry(**raw["retry"])
    raw["position"] = Position(**raw["position"])
    raw["branches"] = tuple(raw["branches"])
    wait = raw.get("wait")
    if wait is not None:
        wait = dict(wait)
        wait["kind"] = WaitKind(wait["kind"])
        wait["on_expiry"] = ExpiryOutcome(wait["on_expiry"])
        wait["approvers"] = tuple(wait["approvers"])
        raw["wait"] = Wait(**wait)
    return Step(**raw)


__all__ = [
    "ExpiryOutcome",
    "Playbook",
    "Position",
    "Retry",
    "Step",
    "StepKind",
    "Trigger",
    "Variable",
    "Wait",
    "WaitKind",
    "content_digest",
    "step_from_dict",
]
