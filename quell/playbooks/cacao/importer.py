"""CACAO 2.0 JSON into the IR: every step, variable, agent, target and marking, and a report.

The IR keeps CACAO's shape (a flat map of steps by id, the same edges, branches that end at
their own end step), so the step ids stay the CACAO ids and most steps map one to one:

==================  ===========================================================================
CACAO               IR
==================  ===========================================================================
start               a ``set`` step that assigns nothing (it only leads on)
end                 ``end``
if-condition        ``if``: the condition translated to a Quell expression
while-condition     ``while``, bounded by ``max_iterations`` (CACAO sets no bound)
switch-condition    ``switch`` on the variable; a ``default`` case is the default branch
parallel            ``parallel`` over ``next_steps``
playbook-action     ``playbook`` (a child run): ``in_args`` are its inputs, ``out_args`` come back
action              one IR step per command and target, chained in order (the first keeps the
                    CACAO id, the last the CACAO edges): ``http-api`` -> ``http.get`` or
                    ``http.request``; ``ssh`` -> ``ssh.run_line`` (the line must match an
                    allow-listed command of the instance); ``openc2-http`` -> ``openc2.command``;
                    ``bash``/``powershell`` -> ``runner.run`` (off unless an admin enables it);
                    ``manual`` (or a step with no commands) -> a ``wait: task`` a person
                    completes (an incident task when the run is about one)
==================  ===========================================================================

Which system a command reaches is a *binding*: a CACAO agent or target id -> a Quell connector
instance (or, for an ``http-api`` one, a base URL). Without one, a step runs against the
instance *named* like the CACAO id (so an admin can bind later by naming an instance), except
``http-api``, which calls the address the playbook gives. What a playbook still needs (an
instance to create, a host it calls) is listed in the report, never guessed.

Inline credentials (``authentication_info_definitions`` with a password or token) are taken
out: the stored playbook text keeps ``kms: true`` and a ``kms_key_identifier`` naming Quell's
sealed credential, and the values go to :class:`~quell.playbooks.cacao.credentials` storage.

Anything Quell cannot run (an unknown command type, an extension it does not know) is listed
under ``unsupported`` with the reason; such a step fails when reached, and a playbook with
unsupported parts imports as a draft that cannot be published.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from quell.errors import InvalidInput
from quell.ingest.observables import refang
from quell.playbooks.cacao.conditions import (
    ConditionError,
    condition_to_expression,
    text_to_template,
    variable_references,
)
from quell.playbooks.cacao.schema import (
    TLP_MARKINGS,
    CacaoInvalid,
    CacaoProblem,
    Mode,
    json_path,
    validate_cacao,
)
from quell.playbooks.ir import (
    ExpiryOutcome,
    Playbook,
    Position,
    Step,
    StepKind,
    Trigger,
    Variable,
    Wait,
    WaitKind,
)
from quell.playbooks.ir import step_from_dict as _ir_step

DEFAULT_MAX_ITERATIONS = 1000
MAX_ITERATIONS = 100_000  # the bound the YAML language allows at most
MISSING_SWITCH = "__switch__"  # the variable a switch-condition without one switches on
# The extension Quell writes into what it exports, for what CACAO cannot say (a Quell action
# and its inputs, triggers, retries, a loop bound); a fixed id, so every export names the same.
QUELL_EXTENSION = "extension-definition--5b0c4e0f-7a8e-5e2a-9c7d-3f6d0c1a9e42"
KNOWN_EXTENSIONS = {
    QUELL_EXTENSION: "Quell",
    # The TC's layout extension (diagram coordinates): kept for export, no effect on a run.
    "extension-definition--418ee24c-9cb1-46d9-afa5-309e01aabc7f": "CACAO Layout",
}
COMMAND_CONNECTORS = {
    "http-api": "http",
    "ssh": "ssh",
    "openc2-http": "openc2",
    "openc2": "openc2",  # SOARCA's examples write "openc2" for openc2-http
    "bash": "runner",
    "powershell": "runner",
}
_HTTP_LINE = re.compile(r"^\s*([A-Za-z]+)\s+(\S+)(?:\s+HTTP/?\d(?:\.\d)?)?\s*$")
_SECRET_FIELDS = {
    "http-basic": {"user_id": "username", "password": "password"},
    "user-auth": {"username": "username", "password": "password"},
    "oauth2": {"token": "token", "oauth_header": "oauth_header"},
}
# What the stored text keeps of an authentication info: everything else (a password, a token,
# a private key, a field no one declared) is taken out, sealed if Quell knows what it is.
_AUTH_KEPT = ("type", "name", "description", "user_id", "username", "oauth_header", "kms",
              "kms_key_identifier")  # fmt: skip
_REFERENCE = re.compile(r"(__[A-Za-z_][A-Za-z0-9_-]{0,199}__):value")


@dataclass
class ImportReport:
    """What an import found: the playbook, and what it could not take or still needs."""

    id: str
    name: str
    modified: str | None
    steps: int
    unsupported: list[dict[str, Any]] = field(default_factory=list)
    needs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    bindings: dict[str, str] = field(default_factory=dict)
    credentials: list[str] = field(default_factory=list)
    signatures: list[dict[str, Any]] = field(default_factory=list)
    tlp: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``quell playbook import-cacao --json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "modified": self.modified,
            "steps": self.steps,
            "unsupported": self.unsupported,
            "needs": self.needs,
            "warnings": self.warnings,
            "bindings": self.bindings,
            "credentials": self.credentials,
            "signatures": self.signatures,
            "tlp": self.tlp,
        }


@dataclass
class Imported:
    """An imported playbook: the IR, the report, the credentials to seal, and the text to
    store (the CACAO JSON without its inline secrets)."""

    playbook: Playbook
    report: ImportReport
    credentials: dict[str, dict[str, str]]
    source: dict[str, Any]
    credential_hosts: dict[str, list[str]] = field(default_factory=dict)

    def source_meta(self) -> dict[str, Any]:
        """What the IR keeps of the (scrubbed) source for export: all but the steps."""
        return {k: v for k, v in self.source.items() if k not in ("workflow", "signatures")}


def is_cacao(data: Any) -> bool:
    """Whether parsed JSON is a CACAO playbook (rather than Quell's YAML language)."""
    return (
        isinstance(data, dict)
        and data.get("type") == "playbook"
        and str(data.get("spec_version", "")).startswith("cacao-")
    )


def credential_id(playbook_id: str, auth_id: str) -> str:
    """The name a playbook's authentication info is sealed under."""
    return f"{playbook_id}/{auth_id}"


def _path(*parts: str | int) -> str:
    return json_path(parts)


def _sub(base: str, *parts: str | int) -> str:
    """``base`` (a JSON path) extended by ``parts``."""
    return base + json_path(parts)[1:]


class _Importer:
    def __init__(
        self,
        doc: dict[str, Any],
        *,
        bindings: Mapping[str, str],
        instance_connector: Callable[[str], str | None] | None,
        max_iterations: int,
        file: str | None,
    ) -> None:
        self.doc = doc
        self.bindings = dict(bindings)
        self.instance_connector = instance_connector
        self.max_iterations = max_iterations
        self.file = file
        self.workflow: dict[str, Any] = doc.get("workflow") or {}
        self.agents: dict[str, Any] = doc.get("agent_definitions") or {}
        self.targets: dict[str, Any] = doc.get("target_definitions") or {}
        self.auths: dict[str, Any] = doc.get("authentication_info_definitions") or {}
        self.steps: dict[str, Step] = {}
        self.report = ImportReport(
            id=str(doc.get("id", "")),
            name=str(doc.get("name", "")),
            modified=doc.get("modified"),
            steps=0,
        )
        self.credentials: dict[str, dict[str, str]] = {}
        self.credential_hosts: dict[str, set[str]] = {}  # where an HTTP credential may go
        self.missing_credentials: set[str] = set()
        self.declared: set[str] = set(doc.get("playbook_variables") or {})
        self.implicit: dict[str, Variable] = {}
        self.used_bindings: dict[str, str] = {}

    # -- report -----------------------------------------------------------------------------

    def unsupported(self, path: str, construct: str, reason: str) -> None:
        self.report.unsupported.append({"path": path, "construct": construct, "reason": reason})

    def need(self, kind: str, ref: str, message: str, **more: Any) -> None:
        entry = {"kind": kind, "ref": ref, "message": message, **more}
        if entry not in self.report.needs:
            self.report.needs.append(entry)

    def warn(self, path: str, message: str) -> None:
        entry = {"path": path, "message": message}
        if entry not in self.report.warnings:
            self.report.warnings.append(entry)

    # -- the playbook -----------------------------------------------------------------------

    def build(self) -> Playbook:
        doc = self.doc
        self.check_extensions()
        self.move_credentials()
        for step_id, raw in self.workflow.items():
            if isinstance(raw, dict):
                self.step(step_id, raw)
        self.report.steps = len(self.workflow)
        start = str(doc.get("workflow_start", ""))
        exception = doc.get("workflow_exception")
        if exception is not None and exception not in self.workflow:
            exception = None  # the validator warned: ignored
        quell_ext = self.quell_extension(doc.get("playbook_extensions"))
        variables = self.variables()
        if isinstance(quell_ext.get("variables"), dict):  # a Quell playbook's own variables
            variables = self.quell_variables(quell_ext["variables"])
        triggers = self.quell_triggers(quell_ext.get("triggers", ()))
        tlp = self.tlp()
        for name in sorted(set(self.bindings) - set(self.used_bindings)):
            self.warn("$", f"the binding for {name} names no agent or target a step uses")
        self.report.bindings = dict(sorted(self.used_bindings.items()))
        self.report.tlp = tlp
        kept = {
            key: value
            for key, value in scrub_credentials(doc).items()
            if key not in ("workflow", "signatures")
        }
        start, exception = self.restore_ids(start, exception)
        timeout = quell_ext.get("timeout")
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise CacaoInvalid([CacaoProblem(self.ext_path("timeout"), "a positive number")])
        return Playbook(
            id=str(quell_ext.get("id") or doc.get("id")),
            name=str(doc.get("name") or doc.get("id")),
            version=1,
            start=start,
            steps=self.steps,
            description=doc.get("description"),
            variables=variables,
            triggers=triggers,
            on_exception=exception,
            timeout=float(timeout) if isinstance(timeout, int | float) else None,
            source_format="cacao",
            extensions={
                "cacao": kept,
                "unsupported": list(self.report.unsupported),
                "quell_id": quell_ext.get("id"),
            },
            tlp=tlp,
        )

    def restore_ids(self, start: str, exception: str | None) -> tuple[str, str | None]:
        """Give the steps Quell exported their own ids back (``lookup``, not
        ``action--<uuid>``), so that expressions naming them (``steps.lookup.output``) hold."""
        rename = {
            step_id: step.extensions["quell_id"]
            for step_id, step in self.steps.items()
            if isinstance(step.extensions.get("quell_id"), str)
        }
        wanted = set(rename.values())
        if not rename or len(wanted) != len(rename) or wanted & (set(self.steps) - set(rename)):
            return start, exception

        def to(ref: str | None) -> str | None:
            return rename.get(ref, ref) if ref is not None else None

        self.steps = {
            rename.get(key, key): _replace(
                step,
                id=rename.get(key, key),
                on_success=to(step.on_success),
                on_failure=to(step.on_failure),
                on_completion=to(step.on_completion),
                on_true=to(step.on_true),
                on_false=to(step.on_false),
                default=to(step.default),
                body=to(step.body),
                cases={case: rename.get(ref, ref) for case, ref in step.cases.items()},
                branches=tuple(rename.get(ref, ref) for ref in step.branches),
            )
            for key, step in self.steps.items()
        }
        return rename.get(start, start), to(exception)

    def ext_path(self, *parts: str | int) -> str:
        return _path("playbook_extensions", QUELL_EXTENSION, *parts)

    def quell_triggers(self, raw: Any) -> tuple[Trigger, ...]:
        """The triggers a Quell export carried, checked as the YAML language checks them."""
        from cronsim import CronSim, CronSimError

        from quell.playbooks.dsl import TriggerModel
        from quell.playbooks.expressions import ExpressionError, compile_expression

        found = []
        items = raw if isinstance(raw, list | tuple) else [raw]
        for index, item in enumerate(items):
            where = self.ext_path("triggers", index)
            try:
                if not isinstance(item, dict):
                    raise ValueError("a trigger is an object")
                data = {k: v for k, v in item.items() if v is not None}
                if "condition" in data:
                    data["if"] = data.pop("condition")
                model = TriggerModel.model_validate(data)
                if model.if_ is not None:
                    compile_expression(model.if_, "trigger.if")
                if (model.on == "schedule") != (model.cron is not None):
                    raise ValueError("a schedule trigger has a cron, and only a schedule has one")
                if model.cron is not None:
                    from datetime import UTC, datetime

                    CronSim(model.cron, datetime.now(UTC))
            except (ValueError, ExpressionError, CronSimError) as exc:  # pydantic's too
                message = getattr(exc, "message", None) or str(exc).splitlines()[0]
                raise CacaoInvalid([CacaoProblem(where, f"not a trigger: {message}")]) from None
            found.append(Trigger(model.on, model.if_, model.cron, model.timezone))
        return tuple(found)

    def quell_variables(self, raw: dict[str, Any]) -> dict[str, Variable]:
        found = {}
        for name, value in raw.items():
            try:
                variable = Variable(**value)
                if variable.name != name or not isinstance(variable.type, str):
                    raise ValueError("name and type do not fit")
            except (TypeError, ValueError) as exc:
                where = self.ext_path("variables", name)
                raise CacaoInvalid([CacaoProblem(where, f"not a variable: {exc}")]) from None
            found[name] = variable
        return found

    def quell_extension(self, extensions: Any) -> dict[str, Any]:
        if isinstance(extensions, dict):
            found = extensions.get(QUELL_EXTENSION)
            if isinstance(found, dict):
                return found
        return {}

    def check_extensions(self) -> None:
        definitions = self.doc.get("extension_definitions") or {}
        for ext_id, definition in definitions.items():
            if ext_id not in KNOWN_EXTENSIONS:
                name = definition.get("name") if isinstance(definition, dict) else None
                self.unsupported(
                    _path("extension_definitions", ext_id),
                    "extension",
                    f"extension {name or ext_id!r} is not one Quell knows: its data is kept "
                    "for export but has no effect on a run",
                )

    def tlp(self) -> str | None:
        levels = ["TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED"]
        definitions = self.doc.get("data_marking_definitions") or {}
        found: list[str] = []
        for marking in self.doc.get("markings") or []:
            level = TLP_MARKINGS.get(marking)
            definition = definitions.get(marking)
            if isinstance(definition, dict) and definition.get("type") == "marking-tlp":
                level = definition.get("tlpv2_level") or level
            if isinstance(level, str):
                level = level.upper().replace("TLP:WHITE", "TLP:CLEAR")
                if level in levels:
                    found.append(level)
        return max(found, key=levels.index) if found else None

    def variables(self) -> dict[str, Variable]:
        result: dict[str, Variable] = {}
        for name, raw in (self.doc.get("playbook_variables") or {}).items():
            raw = raw if isinstance(raw, dict) else {}
            result[name] = Variable(
                name=name,
                type=str(raw.get("type", "string")),
                value=raw.get("value"),
                description=raw.get("description"),
                external=bool(raw.get("external", False)),
                constant=bool(raw.get("constant", False)),
            )
        for name, variable in sorted(self.implicit.items()):
            result.setdefault(name, variable)
        return result

    # -- credentials ------------------------------------------------------------------------

    def move_credentials(self) -> None:
        for auth_id, raw in self.auths.items():
            if not isinstance(raw, dict):
                continue
            kind = str(raw.get("type", ""))
            names = _SECRET_FIELDS.get(kind)
            if names is None:
                self.unsupported(
                    _path("authentication_info_definitions", auth_id),
                    "authentication_info",
                    f"authentication type {kind!r} is not one Quell knows",
                )
                continue
            ident = credential_id(str(self.doc.get("id")), auth_id)
            if raw.get("kms"):  # a reference to a key store, no value inline
                self.need(
                    "credential", auth_id,
                    f"the credential of {auth_id} is not in the playbook (kms): a step that "
                    "uses it fails until it is imported with its values",
                )  # fmt: skip
                self.missing_credentials.add(ident)
                continue
            secrets = {
                names[key]: str(value)
                for key, value in raw.items()
                if key in names and isinstance(value, str | int)
            }
            if set(raw) - set(_AUTH_KEPT):
                self.credentials[ident] = secrets
                self.report.credentials.append(auth_id)

    def credential_of(self, definition_id: str | None) -> str | None:
        if not definition_id:
            return None
        definition = self.agents.get(definition_id) or self.targets.get(definition_id) or {}
        auth = definition.get("authentication_info") if isinstance(definition, dict) else None
        if isinstance(auth, str) and auth in self.auths:
            found = credential_id(str(self.doc.get("id")), auth)
            return found if found in self.credentials or found in self.missing_credentials else None
        return None

    # -- steps ------------------------------------------------------------------------------

    def base(self, step_id: str, raw: dict[str, Any], kind: StepKind, **more: Any) -> Step:
        delay = raw.get("delay")
        timeout = raw.get("timeout")
        variables = {
            name: text_to_template(value["value"])
            if isinstance(value, dict) and isinstance(value.get("value"), str)
            else (value.get("value") if isinstance(value, dict) else None)
            for name, value in (raw.get("step_variables") or {}).items()
        }
        kept = {key: copy.deepcopy(value) for key, value in raw.items()}
        return Step(
            id=step_id,
            kind=kind,
            name=raw.get("name"),
            description=raw.get("description"),
            on_success=raw.get("on_success"),
            on_failure=raw.get("on_failure"),
            on_completion=raw.get("on_completion"),
            delay=delay / 1000 if isinstance(delay, int | float) and delay > 0 else None,
            timeout=timeout / 1000 if isinstance(timeout, int | float) and timeout > 0 else None,
            variables=variables,
            position=Position(),  # the content names a version, not where it was read from
            extensions={"cacao": kept},
            **more,
        )

    def step(self, step_id: str, raw: dict[str, Any]) -> None:
        kind = raw.get("type")
        path = _path("workflow", step_id)
        native = self.quell_extension(raw.get("step_extensions")).get("step")
        if isinstance(native, dict):  # a step Quell exported: rebuilt as it was
            self.steps[step_id] = self.native(step_id, raw, native, path)
            return
        self.implicit_variables(step_id, raw)
        if kind == "start":
            self.steps[step_id] = self.base(step_id, raw, StepKind.SET)
        elif kind == "end":
            self.steps[step_id] = self.base(step_id, raw, StepKind.END)
        elif kind == "if-condition":
            self.steps[step_id] = self.base(
                step_id, raw, StepKind.IF,
                condition=self.condition(raw.get("condition"), path),
                on_true=raw.get("on_true"), on_false=raw.get("on_false"),
            )  # fmt: skip
        elif kind == "while-condition":
            ext = self.quell_extension(raw.get("step_extensions"))
            bound = ext.get("max_iterations", self.max_iterations)
            if not (isinstance(bound, int) and 1 <= bound <= MAX_ITERATIONS):
                where = _sub(path, "step_extensions", QUELL_EXTENSION, "max_iterations")
                raise CacaoInvalid([CacaoProblem(where, f"1 to {MAX_ITERATIONS}")])
            self.steps[step_id] = self.base(
                step_id, raw, StepKind.WHILE,
                condition=self.condition(raw.get("condition"), path),
                on_true=raw.get("on_true"), max_iterations=int(bound),
            )  # fmt: skip
        elif kind == "switch-condition":
            cases = dict(raw.get("cases") or {})
            default = cases.pop("default", None)
            variable = raw.get("switch")
            step = self.base(step_id, raw, StepKind.SWITCH, cases=cases, default=default)
            if not isinstance(variable, str) or not variable:
                # No variable to switch on: one nobody sets, so the default case runs (the
                # export declares it, which keeps the file valid and the meaning the same).
                variable = MISSING_SWITCH
                step = _replace(step, variables={**step.variables, variable: None})
                self.warn(f"{path}", "a switch-condition without 'switch': the default case runs")
            self.steps[step_id] = _replace(step, switch=f"vars[{_literal(variable)}]")
        elif kind == "parallel":
            self.steps[step_id] = self.base(
                step_id, raw, StepKind.PARALLEL, branches=tuple(raw.get("next_steps") or ())
            )
        elif kind == "playbook-action":
            self.steps[step_id] = self.base(
                step_id, raw, StepKind.PLAYBOOK,
                playbook=raw.get("playbook_id"),
                inputs={
                    name: _expr(f"vars[{_literal(name)}]") for name in raw.get("in_args") or ()
                },
                out={
                    name: _expr(f"output.variables[{_literal(name)}]")
                    for name in raw.get("out_args") or ()
                },
            )  # fmt: skip
        elif kind == "action":
            self.action(step_id, raw, path)
        else:
            self.unsupported(path, f"step type {kind}", "not a CACAO 2.0 step type")
            self.steps[step_id] = self.base(
                step_id, raw, StepKind.FAIL, message=f"unsupported step type {kind!r}"
            )

    def native(self, step_id: str, raw: dict[str, Any], data: dict[str, Any], path: str) -> Step:
        """A step Quell exported, rebuilt from its extension. A credential is never taken
        from a file (only an import seals one, for the auth info the file itself carries), and
        an instance it names is checked like a binding and listed in the report."""
        quell_id = data.get("quell_id")
        data = {key: value for key, value in data.items() if key != "quell_id"}
        data.update(id=step_id, position={"file": None, "line": None, "column": None})
        data["extensions"] = {"quell_id": quell_id} if isinstance(quell_id, str) else {}
        data["credential"] = None
        for edge in ("on_success", "on_failure", "on_completion"):
            data[edge] = raw.get(edge)
        where = _sub(path, "step_extensions")
        bound = data.get("max_iterations")
        if bound is not None and not (isinstance(bound, int) and 1 <= bound <= MAX_ITERATIONS):
            raise CacaoInvalid([CacaoProblem(where, f"max_iterations: 1 to {MAX_ITERATIONS}")])
        try:
            step = _ir_step(data)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise CacaoInvalid([CacaoProblem(where, f"not a Quell step: {exc}")]) from None
        if step.instance is not None and step.action:
            connector = step.action.split(".", 1)[0]
            if self.instance_connector is not None:
                found = self.instance_connector(step.instance)
                if found != connector:
                    raise CacaoInvalid(
                        [CacaoProblem(where, f"instance {step.instance!r} is not a {connector} "
                                             "connector instance here")]
                    )  # fmt: skip
            self.warn(path, f"runs {step.action} on the instance {step.instance!r} it names")
        return step

    def implicit_variables(self, step_id: str, raw: dict[str, Any]) -> None:
        """A reference to a variable declared nowhere becomes a run input (with a warning)."""
        local = set(raw.get("step_variables") or {})
        texts: list[str] = []
        for command in raw.get("commands") or ():
            if isinstance(command, dict):
                texts.extend(str(command.get(key, "")) for key in ("command", "content"))
        if isinstance(raw.get("condition"), str):
            texts.append(raw["condition"])
        for text in texts:
            for name in variable_references(text):
                if name not in self.declared and name not in local and name not in self.implicit:
                    self.implicit[name] = Variable(
                        name=name, type="string", value=None, external=True,
                        description="referenced but not declared: a run input",
                    )  # fmt: skip
                    self.warn(
                        _path("workflow", step_id),
                        f"{name} is used but not declared: it is taken as a run input",
                    )

    def condition(self, text: Any, path: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise CacaoInvalid([CacaoProblem(_sub(path, "condition"), "a condition is required")])
        try:
            return condition_to_expression(text)
        except ConditionError as exc:
            raise CacaoInvalid(
                [CacaoProblem(_sub(path, "condition"), f"not a condition Quell reads: {exc}")]
            ) from None

    # -- action steps -----------------------------------------------------------------------

    def action(self, step_id: str, raw: dict[str, Any], path: str) -> None:
        commands = [c for c in raw.get("commands") or () if isinstance(c, dict)]
        out_args = [str(name) for name in raw.get("out_args") or ()]
        parts: list[Step] = []
        if not commands:
            prompt = raw.get("description") or raw.get("name") or step_id
            parts.append(self.task(step_id, raw, text_to_template(str(prompt)), out_args))
        for index, command in enumerate(commands):
            where = _sub(path, "commands", index)
            parts.extend(self.command(step_id, raw, command, where, out_args))
        if not parts:  # pragma: no cover - every command gives at least one step
            return
        # Chain: the first part keeps the CACAO id, the last the CACAO edges; a part that
        # fails goes where the step's failure goes.
        ids = [step_id] + [f"{step_id}~{n}" for n in range(2, len(parts) + 1)]
        failure = raw.get("on_failure") or raw.get("on_completion")
        for number, part in enumerate(parts):
            last = number == len(parts) - 1
            changes: dict[str, Any] = {"id": ids[number]}
            if not last:
                changes.update(on_success=ids[number + 1], on_failure=failure, on_completion=None)
                changes["out"] = {}
            if number:
                changes["delay"] = None  # the step's delay comes once, before its first command
                changes["extensions"] = {"cacao_part_of": step_id}
            self.steps[ids[number]] = _replace(part, **changes)

    def task(self, step_id: str, raw: dict[str, Any], prompt: str, out_args: list[str]) -> Step:
        timeout = raw.get("timeout")
        expires = timeout / 1000 if isinstance(timeout, int | float) and timeout > 0 else None
        step = self.base(
            step_id, raw, StepKind.WAIT,
            wait=Wait(kind=WaitKind.TASK, prompt=prompt, expires_in=expires,
                      on_expiry=ExpiryOutcome.FAIL),
            out=_out_args(out_args),
        )  # fmt: skip
        return _replace(step, timeout=None)  # the timeout is the task's expiry

    def command(
        self,
        step_id: str,
        raw: dict[str, Any],
        command: dict[str, Any],
        where: str,
        out_args: list[str],
    ) -> list[Step]:
        kind = str(command.get("type", ""))
        text = command.get("command")
        if not isinstance(text, str) and isinstance(command.get("command_b64"), str):
            text = _b64(command["command_b64"], where, "command_b64")
        if kind == "manual":
            return [self.task(step_id, raw, text_to_template(str(text or "")), out_args)]
        connector = COMMAND_CONNECTORS.get(kind)
        if connector is None:
            reason = (
                f"command type {kind!r} is not one Quell runs (it runs http-api, ssh, "
                "openc2-http, bash, powershell and manual commands)"
            )
            self.unsupported(where, f"command type {kind}", reason)
            return [
                self.base(step_id, raw, StepKind.FAIL, message=f"unsupported command: {reason}")
            ]
        if kind == "openc2":
            self.warn(_sub(where, "type"), "'openc2' is read as 'openc2-http'")
        agent = raw.get("agent") if isinstance(raw.get("agent"), str) else None
        targets = [t for t in raw.get("targets") or () if isinstance(t, str)]
        if kind == "http-api":
            return self.http(step_id, raw, command, str(text or ""), where, agent, targets,
                             out_args)  # fmt: skip
        if kind == "ssh":
            destinations: list[str | None] = [*targets] or [agent]
            return [
                self.call(step_id, raw, "ssh.run_line", {"line": text_to_template(str(text or ""))},
                          dest, "ssh", out_args, where)
                for dest in destinations
            ]  # fmt: skip
        if kind in ("openc2-http", "openc2"):
            message = self.openc2_message(command, where)
            return [
                self.call(step_id, raw, "openc2.command", message, dest, "openc2", out_args, where)
                for dest in ([*targets] if targets else [agent])
            ]
        inputs = _script_inputs(str(text or ""), kind, where)
        return [
            self.call(step_id, raw, "runner.run", inputs, agent, "runner", out_args, where,
                      shell=kind)
        ]  # fmt: skip

    def openc2_message(self, command: dict[str, Any], where: str) -> dict[str, Any]:
        content = command.get("content")
        if isinstance(command.get("content_b64"), str):
            content = _b64(command["content_b64"], where, "content_b64")
        try:
            message = orjson.loads(content) if isinstance(content, str | bytes) else content
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict):
            body = message.get("body")
            if isinstance(body, dict) and isinstance(body.get("openc2"), dict):
                request = body["openc2"].get("request")
                if isinstance(request, dict):
                    return self.openc2_command(request, where)
            if "action" in message:
                return self.openc2_command(message, where)
        raise CacaoInvalid(
            [CacaoProblem(where, "an openc2-http command's content is not an OpenC2 command")]
        )

    def openc2_command(self, request: dict[str, Any], where: str) -> dict[str, Any]:
        """The command as OpenC2 1.0 says it: a top-level ``profile`` (SOARCA's examples
        write one) names the actuator profile, which the language puts under ``actuator``."""
        command = dict(request)
        profile = command.pop("profile", None)
        if isinstance(profile, str) and profile:
            command.setdefault("actuator", {profile: {}})
            self.warn(
                _sub(where, "content_b64"),
                f"'profile': '{profile}' is read as the actuator {{'{profile}': {{}}}}",
            )
        return command

    def bound(self, definition_id: str | None, connector: str, where: str) -> str | None:
        """The instance a step runs against for an agent/target id (None: the default)."""
        if definition_id is None:
            return None
        definition = self.agents.get(definition_id) or self.targets.get(definition_id) or {}
        label = f"{definition.get('name') or definition_id} ({definition_id})"
        bound = self.bindings.get(definition_id)
        if bound is not None:
            self.used_bindings[definition_id] = bound
            if self.instance_connector is not None:
                found = self.instance_connector(bound)
                if found is None:
                    raise InvalidInput(
                        f"binding {definition_id}={bound}: no connector instance {bound!r}",
                        field="bindings",
                    )
                if found != connector:
                    raise InvalidInput(
                        f"binding {definition_id}={bound}: {bound!r} is a {found} instance; "
                        f"{where} needs a {connector} instance",
                        field="bindings",
                    )
            return bound
        known = self.instance_connector(definition_id) if self.instance_connector else None
        if known != connector:
            self.need(
                "instance", definition_id,
                f"{'an' if connector[0] in 'aeios' else 'a'} {connector} connector instance "
                f"for {label}: name one {definition_id!r}, "
                f"or import with --bind {definition_id}=INSTANCE",
                connector=connector,
            )  # fmt: skip
        return definition_id

    def call(
        self,
        step_id: str,
        raw: dict[str, Any],
        action: str,
        inputs: dict[str, Any],
        destination: str | None,
        connector: str,
        out_args: list[str],
        where: str,
        shell: str | None = None,
    ) -> Step:
        instance = self.bound(destination, connector, where)
        if shell is not None:
            self.need(
                "runner", destination or step_id,
                f"{shell} scripts run only on a runner instance an admin enabled "
                f"({instance or 'runner'}: "
                f"--config '{{\"enabled\": true, \"shell\": \"{shell}\"}}')",
            )  # fmt: skip
        return self.base(
            step_id, raw, StepKind.ACTION,
            action=action, inputs=inputs, instance=instance,
            credential=self.credential_of(destination), out=_out_args(out_args),
        )  # fmt: skip

    def http(
        self,
        step_id: str,
        raw: dict[str, Any],
        command: dict[str, Any],
        text: str,
        where: str,
        agent: str | None,
        targets: list[str],
        out_args: list[str],
    ) -> list[Step]:
        match = _HTTP_LINE.match(text)
        if match is None:
            raise CacaoInvalid(
                [CacaoProblem(_sub(where, "command"), "an http-api command is 'METHOD /path'")]
            )
        method, target = match[1].upper(), refang(match[2])
        headers = {
            str(name): ", ".join(str(v) for v in values)
            if isinstance(values, list)
            else str(values)
            for name, values in (command.get("headers") or {}).items()
        }
        body = command.get("content")
        if isinstance(command.get("content_b64"), str):
            body = _b64(command["content_b64"], where, "content_b64")
        addressed = ("http-api", "net-address")
        destinations: list[str | None] = [
            d for d in (targets or ([agent] if agent else []))
            if (self.targets.get(d) or self.agents.get(d) or {}).get("type") in addressed
            or d in self.bindings
        ] or [agent if agent in self.bindings else None]  # fmt: skip
        steps = []
        for destination in destinations:
            base = self.http_base(destination, where) if "://" not in target else None
            url = target if base is None else base.rstrip("/") + "/" + target.lstrip("/")
            if "@" in urlsplit(url).netloc:  # user:password@host would sit in the IR's text
                origin = "its binding" if destination in self.bindings else "its URL"
                raise CacaoInvalid(
                    [CacaoProblem(where, f"{origin} carries credentials (user@host): put them "
                                         "in an authentication info, which Quell seals")]
                )  # fmt: skip
            if "://" not in url:
                self.need(
                    "address", step_id,
                    f"an address for the http-api command of {step_id}: give its target an "
                    "address, or --bind the target to a base URL",
                )  # fmt: skip
            elif not variable_references(urlsplit(url).netloc or ""):
                host = urlsplit(url).hostname or ""
                self.need("host", host, f"outbound HTTP to {host} (allow it in outbound_allow)")
            credential = self.credential_of(destination)
            if credential is not None:
                # A credential goes only to the host of the agent or target that carries it
                # (its address, or the URL it is bound to), whatever URL a command writes.
                own = self.http_base(destination, where) if destination is not None else None
                named = urlsplit(own).hostname if own and "://" in own else None
                if named is None or variable_references(named) or "__" in named:
                    self.warn(
                        where,
                        "the target that carries the credential names no host: the "
                        "credential is sent nowhere",
                    )
                else:
                    self.credential_hosts.setdefault(credential, set()).add(named.lower())
            inputs: dict[str, Any] = {"url": text_to_template(url)}
            if headers:
                inputs["headers"] = {k: text_to_template(v) for k, v in headers.items()}
            if method == "GET":
                action = "http.get"
            else:
                action = "http.request"
                inputs["method"] = method
                if body is not None:
                    inputs["body"] = text_to_template(str(body))
            steps.append(
                self.base(
                    step_id,
                    raw,
                    StepKind.ACTION,
                    action=action,
                    inputs=inputs,
                    credential=credential,
                    out=_out_args(out_args),
                )
            )
        return steps

    def http_base(self, destination: str | None, where: str) -> str | None:
        if destination is None:
            return None
        bound = self.bindings.get(destination)
        if bound is not None:
            self.used_bindings[destination] = bound
            if "://" not in bound:
                raise InvalidInput(
                    f"binding {destination}={bound}: an http-api target binds to a base URL "
                    "(http://host:port/path)",
                    field="bindings",
                )
            return bound
        definition = self.targets.get(destination) or self.agents.get(destination) or {}
        address = definition.get("address") or {}
        port = definition.get("port")
        for key in ("url", "dname", "ipv4", "ipv6"):
            values = address.get(key) if isinstance(address, dict) else None
            if isinstance(values, list) and values:
                value = refang(str(values[0]))
                if "://" in value:
                    return value
                if key == "ipv6":
                    value = f"[{value}]"
                scheme = "http" if str(port) == "80" else "https"
                suffix = f":{port}" if port and str(port) not in ("80", "443") else ""
                return f"{scheme}://{value}{suffix}"
        return None


def _quote_context(text: str, shell: str) -> dict[int, str]:
    """For each ``__name__:value`` reference in a script, where it stands: ``plain``,
    ``single`` or ``double`` quotes (bash or PowerShell quoting rules)."""
    starts = {m.start(): m.end() for m in _REFERENCE.finditer(text)}
    found: dict[int, str] = {}
    state, index = "plain", 0
    escape = "\\" if shell == "bash" else "`"
    while index < len(text):
        if index in starts:
            found[index] = state
            index = starts[index]
            continue
        char = text[index]
        if state != "single" and char == escape:
            index += 2
            continue
        if state == "plain" and char in "'\"":
            state = "single" if char == "'" else "double"
        elif (state == "single" and char == "'") or (state == "double" and char == '"'):
            state = "plain"
        index += 1
    return found


def _script_inputs(text: str, shell: str, where: str) -> dict[str, Any]:
    """A bash or PowerShell command's inputs. A ``__name__:value`` reference is not spliced
    into the script (a value holding ``$(...)``, a quote or a space would become code or more
    words): the script reads the value from an environment variable the runner sets, quoted so
    that it stays one word wherever the reference stood (``"${QUELL_VAR_x}"`` outside quotes,
    ``${QUELL_VAR_x}`` inside double quotes, ``'"${QUELL_VAR_x}"'`` inside single quotes;
    ``${env:QUELL_VAR_x}`` in PowerShell, where single quotes cannot hold one)."""
    variables: dict[str, str] = {}
    contexts = _quote_context(text, shell)

    def swap(match: re.Match[str]) -> str:
        name = match[1]
        env = "QUELL_VAR_" + re.sub(r"[^A-Za-z0-9_]", "_", name.strip("_"))
        while env in variables and variables[env] != name:
            env += "_"
        variables[env] = name
        context = contexts.get(match.start(), "plain")
        if shell != "bash":
            if context == "single":
                raise CacaoInvalid(
                    [CacaoProblem(where, f"{name}:value inside PowerShell single quotes: use "
                                         "double quotes, where a variable can stand")]
                )  # fmt: skip
            return f"${{env:{env}}}"
        if context == "double":
            return f"${{{env}}}"
        if context == "single":
            return f"'\"${{{env}}}\"'"
        return f'"${{{env}}}"'

    script = _REFERENCE.sub(swap, text)
    return {
        "script": text_to_template(script),
        "variables": {
            env: _expr(f"cacao_text(vars[{_literal(name)}])") for env, name in variables.items()
        },
    }


def _replace(step: Step, **changes: Any) -> Step:
    from dataclasses import replace

    return replace(step, **changes)


def _literal(text: str) -> str:
    """A Jinja string literal for ``text`` (JSON's escaping is valid there)."""
    return orjson.dumps(text).decode()


def _out_args(names: list[str]) -> dict[str, Any]:
    """``out_args``: each variable from the step's result (see ``cacao_result``)."""
    single = "true" if len(names) == 1 else "false"
    return {name: _expr(f"cacao_result(output, {_literal(name)}, {single})") for name in names}


def _expr(expression: str) -> str:
    """A template that is exactly one expression (so its value keeps its type)."""
    return "{{ " + expression + " }}"


def _b64(value: str, where: str, key: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise CacaoInvalid([CacaoProblem(_sub(where, key), "not base64 of UTF-8 text")]) from None


def scrub_credentials(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with every inline password and token replaced by a reference to the sealed
    credential (``kms: true``, ``kms_key_identifier: quell:<credential id>``)."""
    cleaned = copy.deepcopy(doc)
    auths = cleaned.get("authentication_info_definitions")
    if not isinstance(auths, dict):
        return cleaned
    for auth_id, raw in list(auths.items()):
        if not isinstance(raw, dict):
            auths[auth_id] = {}
            continue
        if set(raw) - set(_AUTH_KEPT):
            auths[auth_id] = {key: raw[key] for key in _AUTH_KEPT if key in raw}
            auths[auth_id]["kms"] = True
            auths[auth_id]["kms_key_identifier"] = "quell:" + credential_id(
                str(doc.get("id")), auth_id
            )
    return cleaned


def import_cacao(
    doc: Any,
    *,
    mode: Mode = "lenient",
    bindings: Mapping[str, str] | None = None,
    instance_connector: Callable[[str], str | None] | None = None,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    file: str | None = None,
) -> Imported:
    """CACAO JSON (parsed) into the IR; CacaoInvalid lists every error with its JSON path.

    ``bindings`` maps agent/target ids to instance names (or base URLs for http-api);
    ``instance_connector`` tells the connector of an instance name (None: no such instance),
    so a binding to a missing or wrong instance is refused here, not at run time.
    """
    from quell.playbooks.cacao.signatures import verify_signatures

    problems = validate_cacao(doc, mode)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise CacaoInvalid(errors)
    assert isinstance(doc, dict)
    importer = _Importer(
        doc,
        bindings=bindings or {},
        instance_connector=instance_connector,
        max_iterations=max_iterations,
        file=file,
    )
    playbook = importer.build()
    report = importer.report
    report.warnings = [
        {"path": p.path, "message": p.message} for p in problems if p.severity == "warning"
    ] + report.warnings
    report.signatures = [check.as_dict() for check in verify_signatures(doc)]
    hosts = {name: sorted(found) for name, found in importer.credential_hosts.items()}
    return Imported(playbook, report, importer.credentials, scrub_credentials(doc), hosts)


__all__ = [
    "COMMAND_CONNECTORS",
    "DEFAULT_MAX_ITERATIONS",
    "QUELL_EXTENSION",
    "ImportReport",
    "Imported",
    "credential_id",
    "import_cacao",
    "is_cacao",
    "scrub_credentials",
]
