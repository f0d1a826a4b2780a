"""From YAML text to the IR, with every problem reported as ``file:line:col: message``.

:func:`parse_playbook` reads the text, checks it against the language's models, flattens the
nested step lists into the IR's step map, and checks the structure: unique ids, edges that stay
inside their own list, no loop built from edges (only ``while`` loops, and those are bounded),
and no step that nothing leads to. :mod:`quell.playbooks.validate` then checks what the
structure cannot: actions, their inputs and secrets, and every name an expression reads. All
problems are collected and raised together as :class:`PlaybookInvalid`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from quell.errors import InvalidInput
from quell.playbooks.catalog import ActionCatalog, PlaybookCatalog, SecretCatalog
from quell.playbooks.dsl import PlaybookModel, StepModel, TriggerModel
from quell.playbooks.ir import (
    ExpiryOutcome,
    Playbook,
    Position,
    Retry,
    Step,
    StepKind,
    Trigger,
    Variable,
    Wait,
    WaitKind,
)
from quell.playbooks.source import Path, Source, load


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a playbook, and where."""

    position: Position
    message: str
    path: Path = ()

    def __str__(self) -> str:
        return f"{self.position}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API."""
        return {
            "file": self.position.file,
            "line": self.position.line,
            "column": self.position.column,
            "path": ".".join(str(part) for part in self.path),
            "message": self.message,
        }


class PlaybookInvalid(InvalidInput):
    """A playbook with problems; ``problems`` lists each with its place."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(
            f"{first}{more}",
            field=".".join(str(part) for part in first.path) or "playbook",
            problems=[problem.as_dict() for problem in problems],
        )
        self.problems = list(problems)


@dataclass
class Compiled:
    """A playbook and where each of its steps was written (for validation messages)."""

    playbook: Playbook
    source: Source
    step_paths: dict[str, Path] = field(default_factory=dict)
    scopes: dict[str, frozenset[str]] = field(default_factory=dict)  # loop names per step


def parse_playbook(
    text: str | bytes,
    file: str | None = None,
    *,
    actions: ActionCatalog | None = None,
    secrets: SecretCatalog | None = None,
    playbooks: PlaybookCatalog | None = None,
) -> Playbook:
    """Compile playbook text to the IR; PlaybookInvalid lists every problem found."""
    return compile_source(
        load(text, file), actions=actions, secrets=secrets, playbooks=playbooks
    ).playbook


def compile_source(
    source: Source,
    *,
    actions: ActionCatalog | None = None,
    secrets: SecretCatalog | None = None,
    playbooks: PlaybookCatalog | None = None,
) -> Compiled:
    """Compile parsed text; PlaybookInvalid lists every problem found."""
    from quell.playbooks.validate import validate  # validate imports this module's types

    if not isinstance(source.data, dict):
        raise PlaybookInvalid(
            [Problem(source.position(()), "a playbook is a mapping with id, name and steps")]
        )
    try:
        model = PlaybookModel.model_validate(source.data)
    except ValidationError as exc:
        raise PlaybookInvalid(_model_problems(exc, source)) from None
    builder = _Builder(model, source)
    compiled = builder.build()
    problems = builder.problems + validate(compiled, actions, secrets, playbooks)
    if problems:
        raise PlaybookInvalid(_sorted(problems))
    return compiled


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.position.line or 0, p.position.column or 0))


def _model_problems(exc: ValidationError, source: Source) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc: Path = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        kind = error["type"]
        if kind == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
        elif kind == "missing":
            message = f"{loc[-1]!r} is required"
        elif loc:
            message = f"{_dotted(loc)}: {message}"
        problems.append(Problem(source.position(loc), message, loc))
    return _sorted(_unique(problems))


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for problem in problems:
        key = (problem.position, problem.message)
        if key not in seen:
            seen.add(key)
            kept.append(problem)
    return kept


def _dotted(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Builder:
    """Flattens the nested step lists into the IR's step map, checking the structure."""

    def __init__(self, model: PlaybookModel, source: Source) -> None:
        self.model = model
        self.source = source
        self.steps: dict[str, Step] = {}
        self.paths: dict[str, Path] = {}
        self.scopes: dict[str, frozenset[str]] = {}
        self.problems: list[Problem] = []

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.source.position(path), message, path))

    def build(self) -> Compiled:
        model = self.model
        start = self.branch(model.steps, ("steps",), frozenset())
        handler = (
            self.branch(model.on_exception, ("on_exception",), frozenset({"error"}))
            if model.on_exception
            else None
        )
        variables: dict[str, Variable] = {}
        for name, spec in model.inputs.items():
            spec_type = spec.type if spec else "any"
            variables[name] = Variable(
                name,
                type=spec_type,
                value=spec.default if spec else None,
                description=spec.description if spec else None,
                external=True,
                required=spec.required if spec else False,
            )
        for name, value in model.vars.items():
            if name in variables:
                self.problem(("vars", name), f"{name!r} is declared as an input already")
            variables[name] = Variable(name, value=value)
        triggers = [*([model.trigger] if model.trigger else []), *model.triggers]
        playbook = Playbook(
            id=model.id,
            name=model.name,
            version=model.version,
            start=start or "",
            steps=self.steps,
            description=model.description,
            variables=variables,
            triggers=tuple(_trigger(t) for t in triggers),
            on_exception=handler,
            timeout=model.timeout,
            file=self.source.file,
        )
        return Compiled(playbook, self.source, self.paths, self.scopes)

    def branch(self, steps: list[StepModel], path: Path, scope: frozenset[str]) -> str | None:
        """Add a list of steps (a branch); returns the id it starts with."""
        ids = [step.id for step in steps]
        in_branch = set(ids)
        for index, step in enumerate(steps):
            following = ids[index + 1] if index + 1 < len(ids) else None
            self.add(step, (*path, index), following, in_branch, scope)
        self.check_flow(steps, path)
        return ids[0] if ids else None

    def add(
        self,
        step: StepModel,
        path: Path,
        following: str | None,
        in_branch: set[str],
        scope: frozenset[str],
    ) -> None:
        if step.id in self.steps or step.id in self.paths:
            first = self.source.position((*self.paths[step.id], "id"))
            self.problem((*path, "id"), f"step id {step.id!r} is used twice (first at {first})")
            return
        self.paths[step.id] = path
        self.scopes[step.id] = scope
        for edge in ("on_success", "on_failure", "on_completion"):
            target = getattr(step, edge)
            if target is not None and target not in in_branch:
                where = (
                    "is in another list; an edge may only lead to a step of its own list"
                    if target in self.paths or self._declared_later(target)
                    else "does not exist"
                )
                self.problem((*path, edge), f"{edge}: step {target!r} {where}")
        kind = step.kind
        ends = kind in ("end", "fail")
        on_success = step.on_success
        if on_success is None and step.on_completion is None and not ends:
            on_success = following
        common: dict[str, Any] = {
            "id": step.id,
            "name": step.name,
            "description": step.description,
            "on_success": on_success,
            "on_failure": step.on_failure,
            "on_completion": step.on_completion,
            "delay": step.delay,
            "timeout": step.timeout,
            "variables": dict(step.vars),
            "out": dict(step.out),
            "position": self.source.position(path),
        }
        self.steps[step.id] = self.make(step, path, common, scope)

    def _declared_later(self, target: str) -> bool:
        return any(s.id == target for s in _all_steps(self.model))

    def make(
        self, step: StepModel, path: Path, common: dict[str, Any], scope: frozenset[str]
    ) -> Step:
        kind = step.kind
        if kind == "action":
            return Step(
                kind=StepKind.ACTION,
                action=step.action,
                inputs=dict(step.with_ or {}),
                retry=_retry(step),
                approval=step.approval,
                **common,
            )
        if kind == "if":
            on_true = self.branch(step.then or [], (*path, "then"), scope)
            on_false = self.branch(step.else_ or [], (*path, "else"), scope)
            if on_true is None and on_false is None:
                self.problem(path, "an if step needs then, else or both")
            return Step(
                kind=StepKind.IF, condition=step.if_, on_true=on_true, on_false=on_false, **common
            )
        if kind == "switch":
            cases = {
                value: start
                for value, steps in (step.cases or {}).items()
                if (start := self.branch(steps, (*path, "cases", value), scope)) is not None
            }
            default = self.branch(step.default or [], (*path, "default"), scope)
            if not cases and default is None:
                self.problem(path, "a switch step needs cases, a default or both")
            return Step(
                kind=StepKind.SWITCH, switch=step.switch, cases=cases, default=default, **common
            )
        if kind == "while":
            loop = self.branch(step.do or [], (*path, "do"), scope)
            if loop is None:
                self.problem(path, "a while step needs do: the steps to repeat")
            if step.max_iterations is None:
                self.problem(
                    path,
                    "a loop with no bound: give while a max_iterations "
                    "(it fails when the bound is reached)",
                )
            return Step(
                kind=StepKind.WHILE,
                condition=step.while_,
                on_true=loop,
                max_iterations=step.max_iterations,
                **common,
            )
        if kind == "parallel":
            branches = []
            for index, steps in enumerate(step.parallel or []):
                start = self.branch(steps, (*path, "parallel", index), scope)
                if start is None:
                    self.problem((*path, "parallel", index), "a parallel branch has no steps")
                else:
                    branches.append(start)
            if len(branches) < 1:
                self.problem(path, "a parallel step needs at least one branch")
            return Step(kind=StepKind.PARALLEL, branches=tuple(branches), **common)
        if kind == "for_each":
            inner = scope | {step.as_, "index"}
            if step.do is not None and step.action is not None:
                self.problem(path, "for_each takes do (steps) or an action, not both")
            if step.action is not None:
                body_id = f"{step.id}__each"
                self.paths[body_id] = path
                self.scopes[body_id] = inner
                self.steps[body_id] = Step(
                    id=body_id,
                    kind=StepKind.ACTION,
                    action=step.action,
                    inputs=dict(step.with_ or {}),
                    retry=_retry(step),
                    approval=step.approval,
                    position=self.source.position(path),
                )
                body: str | None = body_id
            else:
                body = self.branch(step.do or [], (*path, "do"), inner)
            if body is None:
                self.problem(path, "a for_each step needs do (steps) or an action")
            return Step(
                kind=StepKind.FOR_EACH,
                items=step.for_each,
                item_name=step.as_,
                body=body,
                concurrency=step.concurrency,
                **common,
            )
        if kind == "playbook":
            return Step(
                kind=StepKind.PLAYBOOK,
                playbook=step.playbook,
                version=step.version,
                inputs=dict(step.with_ or {}),
                **common,
            )
        if kind == "wait":
            return Step(kind=StepKind.WAIT, wait=self.wait(step, path), **common)
        if kind == "set":
            return Step(kind=StepKind.SET, assign=dict(step.set or {}), **common)
        if kind == "fail":
            return Step(kind=StepKind.FAIL, message=step.fail, **common)
        return Step(kind=StepKind.END, **common)

    def wait(self, step: StepModel, path: Path) -> Wait:
        kind = WaitKind(step.wait or "approval")
        if kind is WaitKind.TIMER:
            if (step.duration is None) == (step.until is None):
                self.problem(path, "a timer waits for a duration or until a time (one of them)")
        elif step.duration is not None or step.until is not None:
            self.problem(path, f"duration and until belong to a timer, not a {kind.value} wait")
        if kind is not WaitKind.APPROVAL and step.approvers:
            self.problem((*path, "approvers"), "approvers belong to an approval wait")
        return Wait(
            kind=kind,
            prompt=step.prompt,
            duration=step.duration,
            until=step.until,
            expires_in=step.expires_in,
            on_expiry=ExpiryOutcome(step.on_expiry),
            approvers=tuple(step.approvers),
        )

    def check_flow(self, steps: list[StepModel], path: Path) -> None:
        """Within one list: no loop made of edges, and no step that nothing leads to."""
        if any(self.paths.get(step.id) != (*path, index) for index, step in enumerate(steps)):
            # A step id used twice (reported as such) leaves edges that lead to the wrong step:
            # loops and unreachable steps found from them would be false.
            return
        ids = [s.id for s in steps if s.id in self.paths and self.paths[s.id][:-1] == path]
        if not ids:
            return
        members = set(ids)
        graph = {
            step_id: [e for e in self.steps[step_id].edges() if e in members]
            for step_id in ids
            if step_id in self.steps
        }
        reached = {ids[0]}
        stack = [ids[0]]
        while stack:
            for target in graph.get(stack.pop(), []):
                if target not in reached:
                    reached.add(target)
                    stack.append(target)
        for step_id in ids:
            if step_id not in reached:
                self.problem(
                    (*self.paths[step_id], "id"),
                    f"step {step_id!r} can never run: no step of its list leads to it",
                )
        cycle = _find_cycle(graph)
        if cycle:
            loop = " -> ".join([*cycle, cycle[0]])
            self.problem(
                (*self.paths[cycle[0]], "id"),
                f"a loop with no bound ({loop}); repeat with while and max_iterations instead",
            )


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for target in graph.get(node, []):
            if state.get(target) == 1:
                return trail[trail.index(target) :]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = 2
        trail.pop()
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _all_steps(model: PlaybookModel) -> list[StepModel]:
    found: list[StepModel] = []

    def walk(steps: list[StepModel] | None) -> None:
        for step in steps or []:
            found.append(step)
            walk(step.then)
            walk(step.else_)
            walk(step.do)
            walk(step.default)
            for branch in (step.cases or {}).values():
                walk(branch)
            for branch in step.parallel or []:
                walk(branch)

    walk(model.steps)
    walk(model.on_exception)
    return found


def _retry(step: StepModel) -> Retry:
    if step.retry is None:
        return Retry()
    return Retry(
        max_attempts=step.retry.attempts,
        initial=step.retry.backoff,
        maximum=step.retry.max_backoff,
        multiplier=step.retry.multiplier,
    )


def _trigger(model: TriggerModel) -> Trigger:
    return Trigger(on=model.on, condition=model.if_, cron=model.cron, timezone=model.timezone)


__all__ = ["Compiled", "PlaybookInvalid", "Problem", "compile_source", "parse_playbook"]
