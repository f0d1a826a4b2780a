"""Static checks of a compiled playbook that the structure alone cannot make.

- every action exists, gets only inputs it declares and every input it requires, and literal
  inputs have the declared types (templated ones are checked when they are filled in);
- the secrets an action's connector needs are provided by the configuration;
- every expression compiles and reads only names that exist where it runs: the playbook's
  inputs and variables, the step's own variables, an enclosing ``for_each``'s item and index,
  ``steps.<id>`` of a step that exists, ``output`` in ``out``, and the trigger's payload;
- ``set`` and ``out`` assign only declared, non-constant variables;
- triggers are known, conditions compile, and schedules are valid cron expressions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, TypeAdapter, ValidationError

from quell.playbooks.catalog import ActionCatalog, PlaybookCatalog, SecretCatalog
from quell.playbooks.compiler import Compiled, Problem
from quell.playbooks.expressions import ExpressionError, compile_expression, compile_template
from quell.playbooks.ir import Step, StepKind, WaitKind
from quell.playbooks.source import Path

RUN_NAMES = frozenset({"steps", "inputs", "vars", "run"})
TRIGGER_NAMES = {
    "alert.created": frozenset({"alert"}),
    "incident.created": frozenset({"incident"}),
    "incident.updated": frozenset({"incident", "changes"}),
    "incident.sla_breached": frozenset({"incident", "sla"}),
    "schedule": frozenset({"schedule"}),
    "manual": frozenset(),
}


def validate(
    compiled: Compiled,
    actions: ActionCatalog | None = None,
    secrets: SecretCatalog | None = None,
    playbooks: PlaybookCatalog | None = None,
) -> list[Problem]:
    """Every problem :mod:`quell.playbooks.validate` checks for, with its place."""
    checker = _Checker(compiled, actions, secrets, playbooks)
    for step in compiled.playbook.steps.values():
        checker.step(step)
    checker.triggers()
    return checker.problems


class _Checker:
    def __init__(
        self,
        compiled: Compiled,
        actions: ActionCatalog | None,
        secrets: SecretCatalog | None,
        playbooks: PlaybookCatalog | None,
    ) -> None:
        self.compiled = compiled
        self.playbook = compiled.playbook
        self.actions = actions
        self.secrets = secrets
        self.playbooks = playbooks
        self.problems: list[Problem] = []
        implicit: set[str] = set()
        for trigger in self.playbook.triggers:
            implicit |= TRIGGER_NAMES.get(trigger.on, frozenset())
        self.base = frozenset(self.playbook.variables) | RUN_NAMES | implicit
        self.trigger_names = implicit

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.compiled.source.position(path), message, path))

    # -- expressions ----------------------------------------------------------------------------

    def names_for(self, step: Step) -> frozenset[str]:
        return (
            self.base | frozenset(step.variables) | self.compiled.scopes.get(step.id, frozenset())
        )

    def check_names(
        self,
        path: Path,
        label: str,
        names: Iterable[str],
        steps: Iterable[str],
        known: frozenset[str],
    ) -> None:
        for name in sorted(set(names) - known):
            hint = difflib.get_close_matches(name, sorted(known), n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else ""
            self.problem(path, f"{label}: {name!r} is not defined here{also}")
        for step_id in sorted(set(steps) - set(self.playbook.steps)):
            self.problem(path, f"{label}: steps.{step_id} reads a step that does not exist")

    def expression(self, path: Path, label: str, source: str | None, known: frozenset[str]) -> None:
        if source is None:
            return
        try:
            compiled = compile_expression(source, label)
        except ExpressionError as exc:
            self.problem(path, exc.message)
            return
        self.check_names(path, label, compiled.names, compiled.steps, known)

    def value(self, path: Path, label: str, value: Any, known: frozenset[str]) -> None:
        if isinstance(value, str) and "{{" in value:
            try:
                compiled = compile_template(value, label)
            except ExpressionError as exc:
                self.problem(path, exc.message)
                return
            self.check_names(path, label, compiled.names, compiled.steps, known)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                self.value((*path, key), f"{label}.{key}", item, known)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.value((*path, index), f"{label}[{index}]", item, known)

    # -- steps ----------------------------------------------------------------------------------

    def step(self, step: Step) -> None:
        path = self.compiled.step_paths.get(step.id, ())
        known = self.names_for(step)
        for name, value in step.variables.items():
            if name in RUN_NAMES:
                self.problem((*path, "vars", name), f"vars: {name!r} is a reserved name")
            self.value((*path, "vars", name), f"vars.{name}", value, known)
        self.value((*path, "out"), "out", step.out, known | {"output"})
        self.assignments((*path, "out"), step.out)
        if step.kind is StepKind.ACTION:
            self.action(step, path, known)
        elif step.kind in (StepKind.IF, StepKind.WHILE):
            key = "if" if step.kind is StepKind.IF else "while"
            self.expression((*path, key), key, step.condition, known)
        elif step.kind is StepKind.SWITCH:
            self.expression((*path, "switch"), "switch", step.switch, known)
        elif step.kind is StepKind.FOR_EACH:
            self.value((*path, "for_each"), "for_each", step.items, known)
        elif step.kind is StepKind.SET:
            self.value((*path, "set"), "set", step.assign, known)
            self.assignments((*path, "set"), step.assign)
        elif step.kind is StepKind.FAIL:
            self.value((*path, "fail"), "fail", step.message, known)
        elif step.kind is StepKind.PLAYBOOK:
            self.subplaybook(step, path, known)
        elif step.kind is StepKind.WAIT and step.wait is not None:
            self.value((*path, "prompt"), "prompt", step.wait.prompt, known)
            if step.wait.kind is WaitKind.TIMER:
                self.value((*path, "until"), "until", step.wait.until, known)

    def assignments(self, path: Path, assigned: Mapping[str, Any]) -> None:
        for name in assigned:
            variable = self.playbook.variables.get(name)
            if variable is None:
                self.problem(
                    (*path, name),
                    f"{path[-1]}: {name!r} is not a playbook variable; declare it under vars",
                )
            elif variable.constant:
                self.problem((*path, name), f"{path[-1]}: {name!r} is a constant")

    def action(self, step: Step, path: Path, known: frozenset[str]) -> None:
        self.value((*path, "with"), "with", step.inputs, known)
        if self.actions is None or step.action is None:
            return
        spec = self.actions.spec(step.action)
        if spec is None:
            hint = difflib.get_close_matches(step.action, sorted(self.actions.keys()), n=3)
            also = f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
            self.problem((*path, "action"), f"unknown action {step.action!r}{also}")
            return
        if spec.input_model is not None:
            self.inputs(step, path, spec.key, spec.input_model)
        if self.secrets is not None:
            for secret in spec.secrets:
                if not self.secrets.provides(spec.connector, secret):
                    self.problem(
                        (*path, "action"),
                        f"{spec.key} needs the secret {secret!r} of connector "
                        f"{spec.connector!r}, and no configuration provides it",
                    )

    def inputs(self, step: Step, path: Path, key: str, model: type[BaseModel]) -> None:
        fields = {(info.alias or name): info for name, info in model.model_fields.items()}
        forbids_extra = model.model_config.get("extra") == "forbid"
        for name, value in step.inputs.items():
            info = fields.get(name)
            if info is None:
                if forbids_extra:
                    listed = ", ".join(sorted(fields)) or "none"
                    self.problem(
                        (*path, "with", name),
                        f"with: {name!r} is not an input of {key} (its inputs: {listed})",
                    )
                continue
            if _templated(value):
                continue
            try:
                TypeAdapter(info.annotation or Any).validate_python(value)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                self.problem((*path, "with", name), f"with.{name}: {reason} (for {key})")
        for name, info in fields.items():
            if info.is_required() and name not in step.inputs:
                self.problem((*path, "with"), f"{key} needs the input {name!r}")

    def subplaybook(self, step: Step, path: Path, known: frozenset[str]) -> None:
        self.value((*path, "with"), "with", step.inputs, known)
        if step.playbook == self.playbook.id:
            self.problem((*path, "playbook"), "a playbook may not call itself")
        elif (
            self.playbooks is not None
            and step.playbook is not None
            and not self.playbooks.exists(step.playbook, step.version)
        ):
            version = f" version {step.version}" if step.version else ""
            self.problem((*path, "playbook"), f"no playbook {step.playbook!r}{version} is known")

    def triggers(self) -> None:
        data = self.compiled.source.data
        single = isinstance(data, dict) and data.get("trigger") is not None
        for index, trigger in enumerate(self.playbook.triggers):
            path: Path = ("trigger",) if single and index == 0 else ("triggers", index - single)
            known = (
                RUN_NAMES
                | frozenset(self.playbook.variables)
                | TRIGGER_NAMES.get(trigger.on, frozenset())
            )
            self.expression((*path, "if"), "trigger.if", trigger.condition, known)
            if trigger.on == "schedule":
                if not trigger.cron:
                    self.problem(path, "a schedule trigger needs cron")
                else:
                    try:
                        CronSim(trigger.cron, datetime.now(UTC))
                    except CronSimError as exc:
                        self.problem((*path, "cron"), f"cron: {trigger.cron!r}: {exc}")
            elif trigger.cron:
                self.problem((*path, "cron"), "cron belongs to a schedule trigger")
            if trigger.on == "manual":
                continue
            gives = TRIGGER_NAMES.get(trigger.on, frozenset())
            for name, variable in self.playbook.variables.items():
                required = variable.external and variable.required and variable.value is None
                if required and name not in gives:  # every run it starts would fail without it
                    given = ", ".join(sorted(gives)) or "nothing"
                    self.problem(
                        ("inputs", name),
                        f"input {name!r} is required, but the {trigger.on} trigger gives "
                        f"only {given}: give it a default, or make it optional",
                    )


def _templated(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, Mapping):
        return any(_templated(item) for item in value.values())
    if isinstance(value, list):
        return any(_templated(item) for item in value)
    return False


__all__ = ["validate"]
