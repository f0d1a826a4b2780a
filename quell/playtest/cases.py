"""The test cases written beside a playbook: their language, and the checks made before a run.

For ``block.yaml`` the cases live in ``block.test.yaml`` (or ``block.tests.yaml``)::

    - name: a malicious source is blocked once approved
      inputs: {ip: 203.0.113.7}
      mocks:                              # by step id, or by action key
        lookup: {verdict: malicious}      # the action's output
        block:                            # successive calls: retries
          - error: {type: transient, message: peer busy}
          - {blocked: true}
      decisions:
        ask: approve                      # approve, reject, expire; or {decision, comment}
      expect:
        status: succeeded                 # the default
        path: [lookup, decide, ask, block]
        vars: {outcome: blocked}          # a subset of the final variables
        outputs: {block: {blocked: true}} # a subset of a step's last output
        calls:
          - {action: firewall.deny_ip, with: {ip: 203.0.113.7}, times: 1}

A mock answer is the output mapping itself, or ``{output: …}`` / ``{error: …}``; a list
answers successive calls and its last entry answers any further call. A manual task's decision
is ``{data: …, comment: …}`` and an event's ``{payload: …}``. The file may also be a mapping
with ``cases`` and ``playbooks`` (files of the sub-playbooks the playbook calls, relative to
the cases file).

Every problem — a key that is not a step, a mock output the action could never return, a
decision that does not fit the wait — is reported as ``file:line:col: message``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path as FilePath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from quell.connectors.registry import Registry
from quell.engine.launch import input_type_problem
from quell.errors import InvalidInput
from quell.playbooks.compiler import Problem
from quell.playbooks.ir import Playbook, Position, Step, StepKind, WaitKind
from quell.playbooks.source import Path, Source, load
from quell.playbooks.validate import TRIGGER_NAMES

CASES_SUFFIXES = (".test.yaml", ".tests.yaml", ".test.yml", ".tests.yml")
PLAYBOOK_SUFFIXES = (".yaml", ".yml", ".json")
EACH = "__each"  # the compiler's id for a for_each's action body
ERROR_TYPES = ("transient", "permanent", "rate_limited", "not_found", "auth", "timeout")
STATUSES = ("succeeded", "failed", "waiting")  # waiting: stopped at a wait with no decision


def cases_file_for(playbook: FilePath) -> FilePath | None:
    """The cases file beside ``playbook`` (``foo.test.yaml`` for ``foo.yaml``), if one exists."""
    stem = playbook.name
    for suffix in PLAYBOOK_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for suffix in CASES_SUFFIXES:
        candidate = playbook.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def playbook_file_for(cases: FilePath) -> FilePath | None:
    """The playbook a cases file tests, when ``cases`` is named like one; else None."""
    for suffix in CASES_SUFFIXES:
        if cases.name.endswith(suffix):
            stem = cases.name[: -len(suffix)]
            for ending in PLAYBOOK_SUFFIXES:
                candidate = cases.with_name(stem + ending)
                if candidate.is_file():
                    return candidate
            return cases.with_name(stem + ".yaml")
    return None


def is_cases_file(path: FilePath) -> bool:
    """Whether ``path`` is named like a cases file."""
    return path.name.endswith(CASES_SUFFIXES)


# -- the language -------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MockError(_Model):
    """A failure the mocked action raises."""

    type: Literal[ERROR_TYPES] = Field(  # type: ignore[valid-type]
        "permanent",
        description="transient, rate_limited and timeout are retried (per the step's retry); "
        "permanent, not_found and auth are not.",
    )
    message: str = "mocked failure"
    code: str | None = Field(None, description="The error code (default: the type's).")

    @model_validator(mode="before")
    @classmethod
    def _message_only(cls, data: Any) -> Any:
        return {"message": data} if isinstance(data, str) else data


class MockAnswer(_Model):
    """What one call of a mocked action returns: an output or an error."""

    output: dict[str, Any] | None = None
    error: MockError | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # The output itself, unless the mapping is exactly {output: …} or {error: …}.
        if isinstance(data, dict) and not (data and set(data) <= {"output", "error"}):
            return {"output": data}
        return data

    @model_validator(mode="after")
    def _one(self) -> MockAnswer:
        if (self.output is None) == (self.error is None):
            raise ValueError("a mock answer has an output or an error (one of them)")
        return self


class Decision(_Model):
    """How a person (or a callback) answers a wait."""

    decision: Literal["approve", "reject", "expire", "complete"] | None = Field(
        None,
        description="approve or reject (an approval), complete (a task), or expire: nobody "
        "answers and the wait runs out.",
    )
    comment: str | None = None
    by: str = Field("playbook-test", min_length=1, max_length=200)
    data: dict[str, Any] | None = Field(None, description="A task's completion data.")
    payload: Any = Field(None, description="An event's callback payload.")

    @model_validator(mode="before")
    @classmethod
    def _word(cls, data: Any) -> Any:
        return {"decision": data} if isinstance(data, str) else data


class CallExpect(_Model):
    """Calls of an action (or of one step's action) that must have been made."""

    action: str | None = Field(None, description="The action key.")
    step: str | None = Field(None, description="The step id that called it.")
    with_: dict[str, Any] | None = Field(None, alias="with", description="A subset of inputs.")
    times: int | None = Field(None, ge=0, description="Exactly this many (default: at least 1).")

    @model_validator(mode="after")
    def _what(self) -> CallExpect:
        if self.action is None and self.step is None:
            raise ValueError("a call names an action, a step or both")
        return self


class Expect(_Model):
    """What the run must have done."""

    status: Literal[STATUSES] = "succeeded"  # type: ignore[valid-type]
    path: list[str] | None = Field(None, description="The step ids run, in order, exactly.")
    path_includes: list[str] | None = Field(
        None, description="Step ids that ran, in this order (others may come between)."
    )
    path_excludes: list[str] | None = Field(None, description="Step ids that never ran.")
    vars: dict[str, Any] | None = Field(None, description="A subset of the final variables.")
    outputs: dict[str, Any] | None = Field(
        None, description="Per step id, a subset of its last output."
    )
    error: str | dict[str, Any] | None = Field(
        None, description="The run's error: a part of its message, or a subset of it."
    )
    calls: list[CallExpect] | None = None

    @field_validator("error", mode="wrap")
    @classmethod
    def _error(cls, value: Any, handler: Any) -> Any:
        if value is None or isinstance(value, str | dict):
            return handler(value)
        raise ValueError("give a part of the error's message (text) or a subset of it (a mapping)")


class Case(_Model):
    """One test case."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    now: datetime | None = Field(None, description="The clock's time when the run starts.")
    mocks: dict[str, list[MockAnswer]] = Field(default_factory=dict)
    decisions: dict[str, list[Decision]] = Field(default_factory=dict)
    expect: Expect = Field(default_factory=Expect)

    @field_validator("now")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("mocks", "decisions")
    @classmethod
    def _not_empty(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, answers in value.items():
            if not answers:
                raise ValueError(f"{key}: an empty list answers nothing")
        return value


class CasesModel(_Model):
    """A cases file as a mapping."""

    playbooks: list[str] = Field(
        default_factory=list, description="Sub-playbook files (relative to this file)."
    )
    cases: list[Case] = Field(min_length=1)


# -- reading ------------------------------------------------------------------------------------


@dataclass
class CaseSpec:
    """A case and where it was written."""

    case: Case
    path: Path  # of the case in the file: (3,) or ("cases", 3)


@dataclass
class CasesFile:
    """A parsed cases file."""

    source: Source
    cases: list[CaseSpec]
    playbooks: list[FilePath] = field(default_factory=list)

    def position(self, path: Path) -> Position:
        """Where ``path`` was written."""
        return self.source.position(path)


class CasesInvalid(InvalidInput):
    """A cases file with problems; ``problems`` lists each with its place."""

    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}", problems=[problem.as_dict() for problem in problems])
        self.problems = problems


def read_cases(text: str | bytes, file: str | None = None) -> CasesFile:
    """Parse and validate a cases file; CasesInvalid (or InvalidInput) names every problem."""
    source = load(text, file)
    data = _plain(source.data)
    if isinstance(data, list):
        base: Path = ()
        raw_cases = data
    elif isinstance(data, dict) and "cases" in data:
        base = ("cases",)
        raw_cases = data["cases"] if isinstance(data["cases"], list) else []
    else:
        raise CasesInvalid(
            [
                Problem(
                    source.position(()),
                    "a cases file is a list of cases (or a mapping with cases)",
                )
            ]
        )
    # A single mock answer or decision stands for a list of one; remember which, so that a
    # problem inside one is reported at the place it was written.
    wrapped: set[Path] = set()
    for index, raw in enumerate(raw_cases):
        if not isinstance(raw, dict):
            continue
        for section in ("mocks", "decisions"):
            entries = raw.get(section)
            if isinstance(entries, dict):
                for key, value in entries.items():
                    if not isinstance(value, list):
                        entries[key] = [value]
                        wrapped.add((*base, index, section, key))
    try:
        if base:
            model = CasesModel.model_validate(data)
            cases = model.cases
            playbooks = model.playbooks
        else:
            if not raw_cases:
                raise CasesInvalid([Problem(source.position(()), "the file has no cases")])
            cases = _CASE_LIST.validate_python(raw_cases)
            playbooks = []
    except ValidationError as exc:
        raise CasesInvalid(_model_problems(exc, source, wrapped)) from None
    specs = [CaseSpec(case, (*base, index)) for index, case in enumerate(cases)]
    folder = FilePath(file).parent if file else FilePath()
    return CasesFile(source, specs, [folder / name for name in playbooks])


_CASE_LIST = TypeAdapter(list[Case])


def _plain(value: Any) -> Any:
    """YAML dates and times as the text JSON would carry them (what a run's data holds)."""
    if isinstance(value, date):  # datetime too
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _model_problems(exc: ValidationError, source: Source, wrapped: set[Path]) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[Any, str]] = set()
    for error in exc.errors():
        loc = _place(tuple(error["loc"]), source)
        for at in range(len(loc)):
            if loc[:at] in wrapped and loc[at] == 0:
                loc = loc[:at] + loc[at + 1 :]
                break
        message = str(error["msg"]).removeprefix("Value error, ")
        kind = error["type"]
        if kind == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
        elif kind == "missing":
            message = f"{loc[-1]!r} is required"
        elif _in_case(loc):
            message = f"{_dotted(_in_case(loc))}: {message}"
        position = source.position(loc)
        if (position, message) not in seen:
            seen.add((position, message))
            problems.append(Problem(position, message, loc))
    return _sorted(problems)


def _place(loc: Path, source: Source) -> Path:
    """The error's path in the file: without the names pydantic gives union members."""
    kept: Path = ()
    for part in loc:
        if (
            isinstance(part, str)
            and (*kept, part) not in source.positions
            and (part in _TAGS or "[" in part or "(" in part)
        ):
            continue
        kept = (*kept, part)
    return kept


_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _in_case(loc: Path) -> Path:
    """The part of a path inside its case (the place already says which case)."""
    if loc[:1] == ("cases",) and len(loc) > 1:
        loc = loc[1:]
    return loc[1:] if loc and isinstance(loc[0], int) else loc


def _dotted(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.position.line or 0, p.position.column or 0))


# -- checking against the playbook ----------------------------------------------------------


@dataclass
class Steps:
    """The steps cases can name: the playbook's, and its sub-playbooks' (for mocks)."""

    playbook: Playbook
    children: list[Playbook] = field(default_factory=list)

    def all(self) -> Iterable[Step]:
        """Every step of the playbook and its sub-playbooks."""
        for playbook in (self.playbook, *self.children):
            yield from playbook.steps.values()

    def action_step(self, step_id: str) -> Step | None:
        """The action step ``step_id`` names (a for_each's id names its action body)."""
        for playbook in (self.playbook, *self.children):
            step = playbook.steps.get(step_id + EACH) or playbook.steps.get(step_id)
            if step is not None and step.kind is StepKind.ACTION:
                return step
        return None

    def actions(self) -> set[str]:
        """The action keys some step calls."""
        return {step.action for step in self.all() if step.action}

    def waits(self) -> dict[str, str]:
        """Step ids that wait for a person or an event: approval, task or event."""
        found: dict[str, str] = {}
        for step in self.all():
            if step.kind is StepKind.WAIT and step.wait and step.wait.kind is not WaitKind.TIMER:
                found[step.id] = step.wait.kind.value
            elif step.kind is StepKind.ACTION and step.approval:
                found[step.id.removesuffix(EACH)] = WaitKind.APPROVAL.value
        return found

    def visible(self) -> list[str]:
        """The playbook's own step ids that can appear in a path."""
        return [
            step_id
            for step_id, step in self.playbook.steps.items()
            if step.kind is not StepKind.END and not step_id.endswith(EACH)
        ]


def check_cases(cases: CasesFile, steps: Steps, registry: Registry) -> list[Problem]:
    """Every way the cases do not fit the playbook, with its place."""
    checker = _Checker(cases, steps, registry)
    names: dict[str, Path] = {}
    for spec in cases.cases:
        name = spec.case.name
        if name in names:
            first = cases.position((*names[name], "name"))
            checker.problem(
                (*spec.path, "name"), f"two cases are named {name!r} (first at {first})"
            )
        else:
            names[name] = spec.path
        checker.case(spec)
    return _sorted(checker.problems)


class _Checker:
    def __init__(self, cases: CasesFile, steps: Steps, registry: Registry) -> None:
        self.cases = cases
        self.steps = steps
        self.registry = registry
        self.problems: list[Problem] = []
        self.playbook = steps.playbook

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.cases.position(path), message, path))

    def item(self, path: Path, index: int) -> Path:
        """The place of a list's item; a single value written without a list is the list."""
        return (*path, index) if (*path, index) in self.cases.source.positions else path

    def unknown(self, path: Path, label: str, name: str, known: Iterable[str]) -> None:
        hint = difflib.get_close_matches(name, sorted(set(known)), n=1)
        also = f"; did you mean {hint[0]!r}?" if hint else ""
        self.problem(path, f"{label}{also}")

    def case(self, spec: CaseSpec) -> None:
        case, path = spec.case, spec.path
        self.inputs(case, path)
        for key, answers in case.mocks.items():
            self.mock((*path, "mocks", key), key, answers)
        for key, decisions in case.decisions.items():
            self.decision((*path, "decisions", key), key, decisions)
        self.expect(case.expect, (*path, "expect"))

    def inputs(self, case: Case, path: Path) -> None:
        declared = {name: v for name, v in self.playbook.variables.items() if v.external}
        payloads: set[str] = set()  # what a trigger passes: alert, incident, changes, schedule
        for trigger in self.playbook.triggers:
            payloads |= TRIGGER_NAMES.get(trigger.on, frozenset())
        for name in case.inputs:
            if name not in declared and name not in payloads:
                self.unknown(
                    (*path, "inputs", name),
                    f"inputs: {name!r} is not an input of {self.playbook.id}",
                    name,
                    [*declared, *payloads],
                )
        for name, variable in declared.items():
            if variable.required and name not in case.inputs:
                where = (*path, "inputs") if case.inputs else (*path, "name")
                self.problem(where, f"inputs: the playbook needs the input {name!r}")
            elif name in case.inputs:  # as a run refuses it (quell playbook run)
                problem = input_type_problem(self.playbook, name, case.inputs[name])
                if problem is not None:
                    self.problem((*path, "inputs", name), f"inputs: {problem}")

    def mock(self, path: Path, key: str, answers: list[MockAnswer]) -> None:
        step = self.steps.action_step(key)
        if step is not None:
            action = step.action
        elif key in self.steps.actions():
            action = key
        else:
            known = [s.id.removesuffix(EACH) for s in self.steps.all() if s.action]
            self.unknown(
                path,
                f"mocks: {key!r} is neither an action step nor an action the playbook calls",
                key,
                [*known, *self.steps.actions()],
            )
            return
        definition = self.registry.actions.get(action or "")
        if definition is None or definition.output_model is None:
            return
        for index, answer in enumerate(answers):
            if answer.output is None:
                continue
            where = self.item(path, index)
            try:
                definition.output_model.model_validate(answer.output)
            except ValidationError as exc:
                error = exc.errors()[0]
                field_name = ".".join(str(part) for part in error["loc"]) or "output"
                self.problem(
                    where,
                    f"mocks.{key}: {action} never returns this ({field_name}: {error['msg']})",
                )

    def decision(self, path: Path, key: str, decisions: list[Decision]) -> None:
        waits = self.steps.waits()
        kind = waits.get(key)
        if kind is None:
            self.unknown(
                path,
                f"decisions: {key!r} is not a step that waits for an approval, a task or an event",
                key,
                waits,
            )
            return
        step = next((s for s in self.steps.all() if s.id.removesuffix(EACH) == key), None)
        expires = step is not None and step.wait is not None and step.wait.expires_in is not None
        for index, decision in enumerate(decisions):
            where = self.item(path, index)
            word = decision.decision
            if word == "expire":
                if not expires:
                    self.problem(where, f"decisions.{key}: expire, but the wait has no expires_in")
                continue
            if kind == "approval":
                if word not in ("approve", "reject"):
                    self.problem(
                        where, f"decisions.{key}: an approval is decided approve, reject or expire"
                    )
                if decision.data is not None or "payload" in decision.model_fields_set:
                    self.problem(
                        where, f"decisions.{key}: data and payload belong to a task or event"
                    )
            elif kind == "task":
                if word not in (None, "complete"):
                    self.problem(where, f"decisions.{key}: a task is completed (or expires)")
                if "payload" in decision.model_fields_set:
                    self.problem(where, f"decisions.{key}: payload belongs to an event wait")
            elif kind == "event":
                if word is not None:
                    self.problem(where, f"decisions.{key}: an event gets a payload (or expires)")
                if decision.data is not None:
                    self.problem(where, f"decisions.{key}: data belongs to a task wait")

    def path_ids(self, path: Path, label: str, ids: list[str] | None) -> None:
        if ids is None:
            return
        visible = self.steps.visible()
        for index, step_id in enumerate(ids):
            step = self.playbook.steps.get(step_id)
            if step is not None and step.kind is StepKind.END:
                self.problem(
                    (*path, index),
                    f"{label}: {step_id!r} is an end step; it does nothing and never appears "
                    "in a path",
                )
            elif step_id not in visible:
                self.unknown(
                    (*path, index),
                    f"{label}: {step_id!r} is not a step of the playbook",
                    step_id,
                    visible,
                )

    def expect(self, expect: Expect, path: Path) -> None:
        self.path_ids((*path, "path"), "path", expect.path)
        self.path_ids((*path, "path_includes"), "path_includes", expect.path_includes)
        self.path_ids((*path, "path_excludes"), "path_excludes", expect.path_excludes)
        for name in expect.vars or {}:
            if name not in self.playbook.variables:
                self.unknown(
                    (*path, "vars", name),
                    f"vars: {name!r} is not a variable or input of the playbook",
                    name,
                    self.playbook.variables,
                )
        visible = self.steps.visible()
        for step_id in expect.outputs or {}:
            if step_id not in visible:
                self.unknown(
                    (*path, "outputs", step_id),
                    f"outputs: {step_id!r} is not a step of the playbook",
                    step_id,
                    visible,
                )
        for index, call in enumerate(expect.calls or []):
            where = (*path, "calls", index)
            step = self.steps.action_step(call.step) if call.step else None
            if call.step is not None and step is None:
                known = [s.id.removesuffix(EACH) for s in self.steps.all() if s.action]
                self.unknown(
                    (*where, "step"),
                    f"calls: {call.step!r} is not an action step",
                    call.step,
                    known,
                )
            if call.action is not None:
                if call.action not in self.steps.actions():
                    self.unknown(
                        (*where, "action"),
                        f"calls: no step calls {call.action!r}",
                        call.action,
                        self.steps.actions(),
                    )
                elif step is not None and step.action != call.action:
                    self.problem(
                        (*where, "action"),
                        f"calls: step {call.step!r} calls {step.action}, not {call.action}",
                    )


def load_cases(path: FilePath) -> CasesFile:
    """Read a cases file from disk."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the cases file ({exc.strerror})") from None
    return read_cases(text, str(path))


__all__ = [
    "CASES_SUFFIXES",
    "EACH",
    "CallExpect",
    "Case",
    "CaseSpec",
    "CasesFile",
    "CasesInvalid",
    "Decision",
    "Expect",
    "MockAnswer",
    "MockError",
    "Steps",
    "cases_file_for",
    "check_cases",
    "is_cases_file",
    "load_cases",
    "playbook_file_for",
    "read_cases",
]
