"""The IR out to CACAO 2.0 JSON that passes strict validation.

A playbook imported from CACAO goes back as it came (its steps, agents, targets, markings and
extensions are kept in the IR), cleaned of what the spec does not define, with ids made
well-formed and every branch given its own end step. A playbook written in Quell's YAML is
written as CACAO: ids become ``type--uuid`` (derived from the Quell ids, so an export is
stable), ``if``/``while``/``switch``/``parallel``/sub-playbooks/manual tasks map to their CACAO
steps, and what CACAO cannot say (a Quell action and its inputs, a loop bound, ``for_each``,
approvals, timers, triggers) travels in the Quell extension, from which an import rebuilds
the same steps. Other CACAO tools see those steps as ``manual`` commands describing the work.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from quell.playbooks.cacao.conditions import expression_to_condition, template_to_text
from quell.playbooks.cacao.importer import MISSING_SWITCH, QUELL_EXTENSION
from quell.playbooks.ir import Playbook, Step, StepKind, WaitKind

_ID = re.compile(
    r"^[a-z][a-z0-9-]+[a-z0-9]--[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-"
    r"[0-9a-f]{12}$"
)
_NAMESPACE = uuid.UUID("6c1f0d52-9b1e-4d0a-8f39-0c6b8e0f2a11")
_QUELL_IDENTITY = "identity--" + str(uuid.uuid5(_NAMESPACE, "quell"))
_PLAYBOOK_KEYS = (
    "type", "spec_version", "id", "name", "description", "playbook_types",
    "playbook_activities", "playbook_processing_summary", "created_by", "created", "modified",
    "revoked", "valid_from", "valid_until", "derived_from", "related_to", "priority",
    "severity", "impact", "industry_sectors", "labels", "external_references", "markings",
    "playbook_variables", "workflow_start", "workflow_exception", "workflow",
    "playbook_extensions", "authentication_info_definitions", "agent_definitions",
    "target_definitions", "extension_definitions", "data_marking_definitions", "signatures",
)  # fmt: skip
_STEP_COMMON = (
    "type", "name", "description", "external_references", "delay", "timeout",
    "step_variables", "owner", "on_completion", "on_success", "on_failure", "step_extensions",
)  # fmt: skip
_STEP_KEYS = {
    "action": ("commands", "agent", "targets", "in_args", "out_args"),
    "playbook-action": ("playbook_id", "playbook_version", "in_args", "out_args"),
    "parallel": ("next_steps",),
    "if-condition": ("condition", "on_true", "on_false"),
    "while-condition": ("condition", "on_true"),
    "switch-condition": ("switch", "cases"),
    "start": (),
    "end": (),
}
_AGENT_COMMON = ("type", "name", "description", "location", "agent_target_extensions")
_AGENT_KEYS = {
    "group": ("contact",),
    "individual": ("contact",),
    "organization": ("contact",),
    "location": ("logical",),
    "sector": ("sector",),
    "http-api": ("address", "port", "authentication_info", "category"),
    "linux": ("address", "port", "authentication_info", "category"),
    "ssh": ("address", "port", "authentication_info", "category"),
    "net-address": ("address", "authentication_info", "category"),
    "security-category": ("category",),
}
_ADDRESSED = ("http-api", "linux", "ssh", "net-address")
_AUTH_KEYS = {
    "http-basic": ("type", "user_id", "password", "kms", "kms_key_identifier"),
    "user-auth": ("type", "username", "password", "kms", "kms_key_identifier"),
    "oauth2": ("type", "oauth_header", "token", "kms", "kms_key_identifier"),
}
_COMMAND_KEYS = (
    "type", "description", "version", "playbook_activity", "external_references", "command",
    "command_b64", "headers", "content", "content_b64",
)  # fmt: skip
_VARIABLE_KEYS = ("type", "description", "value", "constant", "external")
_CACAO_TYPES = {
    "any": "string", "string": "string", "integer": "integer", "number": "float",
    "boolean": "bool", "object": "dictionary", "list": "dictionary",
}  # fmt: skip
_EDGES = ("on_success", "on_failure", "on_completion")
_CACAO_NAME = re.compile(r"__[a-zA-Z_][a-zA-Z0-9_-]{0,199}__")


def cacao_id(kind: str, *parts: str) -> str:
    """A stable, well-formed CACAO id for something Quell names otherwise."""
    return f"{kind}--{uuid.uuid5(_NAMESPACE, '/'.join(parts))}"


def _timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _pick(raw: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    return {key: copy.deepcopy(raw[key]) for key in keys if key in raw}


class _Exporter:
    def __init__(self, playbook: Playbook, now: datetime) -> None:
        self.playbook = playbook
        self.now = now
        cacao = playbook.extensions.get("cacao")
        self.source: dict[str, Any] = cacao if isinstance(cacao, dict) else {}
        self.notes: list[dict[str, str]] = []
        self.ids: dict[str, str] = {}  # IR step id -> CACAO step id
        self.renamed: dict[str, str] = {}  # ill-formed agent/target/auth ids -> well-formed
        self.workflow: dict[str, Any] = {}
        self.agents: dict[str, Any] = {}
        self.quell_agent: str | None = None

    def note(self, where: str, message: str) -> None:
        self.notes.append({"path": where, "message": message})

    # -- ids ----------------------------------------------------------------------------------

    def step_type(self, step: Step) -> str:
        raw = step.extensions.get("cacao")
        if isinstance(raw, dict) and isinstance(raw.get("type"), str) and raw["type"] in _STEP_KEYS:
            return str(raw["type"])
        return {
            StepKind.IF: "if-condition",
            StepKind.WHILE: "while-condition",
            StepKind.FOR_EACH: "while-condition",
            StepKind.SWITCH: "switch-condition",
            StepKind.PARALLEL: "parallel",
            StepKind.PLAYBOOK: "playbook-action",
            StepKind.END: "end",
        }.get(step.kind, "action")

    def map_ids(self) -> None:
        for step in self.playbook.steps.values():
            if step.extensions.get("cacao_part_of"):
                continue
            kind = self.step_type(step)
            good = _ID.match(step.id) and step.id.startswith(kind + "--")
            self.ids[step.id] = step.id if good else cacao_id(kind, self.playbook.id, step.id)

    def ref(self, step_id: str | None) -> str | None:
        if step_id is None:
            return None
        return self.ids.get(step_id, step_id)

    def definition_id(self, old: str, kind: str) -> str:
        """The id a definition is written under: its own when well-formed for its type."""
        if _ID.match(old) and old.startswith(f"{kind}--"):
            return old
        new = self.renamed.get(old)
        if new is None:
            new = self.renamed[old] = cacao_id(kind, self.playbook.id, old)
            self.note(f"$['{old}']", f"{old} is not a well-formed {kind} id: written as {new}")
        return new

    # -- the playbook -------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        playbook, source = self.playbook, self.source
        self.map_ids()
        doc: dict[str, Any] = _pick(source, _PLAYBOOK_KEYS)
        doc.pop("signatures", None)
        playbook_id = playbook.id
        if not _ID.match(playbook_id) or not playbook_id.startswith("playbook--"):
            playbook_id = cacao_id("playbook", playbook.id)
        created_by = doc.get("created_by") or _QUELL_IDENTITY
        doc.update(
            type="playbook",
            spec_version="cacao-2.0",
            id=playbook_id,
            name=playbook.name,
            created_by=created_by if _ID.match(str(created_by)) else _QUELL_IDENTITY,
        )
        if playbook.description:
            doc["description"] = playbook.description
        doc.setdefault("created", _timestamp(self.now))
        doc.setdefault("modified", doc["created"])
        self.definitions(doc)
        for step in playbook.steps.values():
            if not step.extensions.get("cacao_part_of"):
                self.step(step)
        start = self.ref(playbook.start)
        first = self.workflow.get(start or "")
        if first is None or first.get("type") != "start":
            # CACAO starts at a start step: one that leads to the IR's first step.
            new_start = cacao_id("start", playbook.id, "start")
            self.workflow[new_start] = {"type": "start", "on_completion": start}
            start = new_start
        doc["workflow_start"] = start
        if playbook.on_exception:
            doc["workflow_exception"] = self.ref(playbook.on_exception)
        else:
            doc.pop("workflow_exception", None)
        self.end_branches()
        self.own_ends(start)
        doc["workflow"] = self.workflow
        variables = self.variables()
        if variables:
            doc["playbook_variables"] = variables
        else:
            doc.pop("playbook_variables", None)
        if self.agents:
            doc["agent_definitions"] = self.agents
        ext = self.playbook_extension()
        extensions = dict(doc.get("playbook_extensions") or {})
        extensions.pop(QUELL_EXTENSION, None)
        if ext:
            extensions[QUELL_EXTENSION] = ext
        if extensions:
            doc["playbook_extensions"] = extensions
        if self.uses_quell_extension(doc):
            definitions = dict(doc.get("extension_definitions") or {})
            definitions[QUELL_EXTENSION] = {
                "type": "extension-definition",
                "name": "Quell",
                "description": "What a Quell playbook says that CACAO 2.0 cannot: Quell "
                "actions and their inputs, loop bounds, for-each, approvals, timers, triggers.",
                "created_by": _QUELL_IDENTITY,
                "schema": "https://quell.dev/schemas/cacao-extension-1.json",
                "version": "1.0.0",
            }
            doc["extension_definitions"] = definitions
        return {key: doc[key] for key in _PLAYBOOK_KEYS if key in doc}

    def uses_quell_extension(self, doc: dict[str, Any]) -> bool:
        if QUELL_EXTENSION in (doc.get("playbook_extensions") or {}):
            return True
        return any(
            QUELL_EXTENSION in (step.get("step_extensions") or {})
            for step in self.workflow.values()
        )

    def playbook_extension(self) -> dict[str, Any]:
        playbook = self.playbook
        ext: dict[str, Any] = {}
        if playbook.source_format != "cacao" or playbook.extensions.get("quell_id"):
            ext["id"] = playbook.id
        if playbook.triggers:
            ext["triggers"] = [asdict(trigger) for trigger in playbook.triggers]
        if playbook.timeout is not None:
            ext["timeout"] = playbook.timeout
        if any(not _CACAO_NAME.fullmatch(name) for name in playbook.variables):
            # Quell names (``host``) are not CACAO names (``__host__``): the CACAO side gets
            # the latter, and the playbook's own variables travel here, exactly.
            ext["variables"] = {name: asdict(v) for name, v in playbook.variables.items()}
        return ext

    def variables(self) -> dict[str, Any]:
        declared = self.source.get("playbook_variables")
        declared = declared if isinstance(declared, dict) else {}
        result: dict[str, Any] = {}
        for name, variable in self.playbook.variables.items():
            if name in declared:
                result[name] = _pick(declared[name], _VARIABLE_KEYS)
                continue
            entry: dict[str, Any] = {"type": _CACAO_TYPES.get(variable.type, variable.type)}
            if variable.description:
                entry["description"] = variable.description
            if variable.value is not None:
                entry["value"] = (
                    variable.value
                    if isinstance(variable.value, str | dict)
                    else _json_text(variable.value)
                )
            if variable.constant:
                entry["constant"] = True
            if variable.external:
                entry["external"] = True
            result[_variable_name(name, self)] = entry
        return result

    def definitions(self, doc: dict[str, Any]) -> None:
        for key in ("agent_definitions", "target_definitions"):
            found = doc.get(key)
            if not isinstance(found, dict):
                continue
            cleaned: dict[str, Any] = {}
            for old, raw in found.items():
                kind = str(raw.get("type", "")) if isinstance(raw, dict) else ""
                if kind in _ADDRESSED and not (isinstance(raw, dict) and raw.get("address")):
                    self.note(
                        f"$['{key}']['{old}']",
                        f"a {kind} agent needs an address and has none: written as an organization",
                    )
                    kind = "organization-without-address"
                if kind not in _AGENT_KEYS:
                    self.note(
                        f"$['{key}']['{old}']",
                        f"agent type {kind!r} is not CACAO 2.0: written as an organization",
                    )
                    raw = {**_pick(raw, _AGENT_COMMON), "type": "organization"}
                    kind = "organization"
                entry = _pick(raw, _AGENT_COMMON + _AGENT_KEYS[kind])
                entry.setdefault("name", old)
                cleaned[self.definition_id(old, kind)] = entry
            if key == "agent_definitions":
                self.agents = cleaned
            else:
                doc[key] = cleaned
        auths = doc.get("authentication_info_definitions")
        if isinstance(auths, dict):
            doc["authentication_info_definitions"] = {
                self.definition_id(old, str(raw.get("type", "auth"))): _pick(
                    raw, _AUTH_KEYS.get(str(raw.get("type")), ("type",))
                )
                for old, raw in auths.items()
                if isinstance(raw, dict)
            }
        for key in ("agent_definitions", "target_definitions"):  # their auth references
            found = self.agents if key == "agent_definitions" else doc.get(key)
            for entry in (found or {}).values():
                if "authentication_info" in entry:
                    entry["authentication_info"] = self.renamed.get(
                        entry["authentication_info"], entry["authentication_info"]
                    )
        if isinstance(doc.get("playbook_extensions"), dict):
            doc["playbook_extensions"] = copy.deepcopy(doc["playbook_extensions"])

    # -- steps --------------------------------------------------------------------------------

    def edges(self, step: Step, entry: dict[str, Any]) -> None:
        """CACAO forbids on_completion beside on_success/on_failure: say the same with two."""
        last = self.last_part(step)
        success, failure, completion = last.on_success, last.on_failure, last.on_completion
        for edge in _EDGES:
            entry.pop(edge, None)
        if completion and (success or failure):
            success, failure, completion = success or completion, failure or completion, None
        if success and success == failure:
            success, failure, completion = None, None, success
        for edge, value in zip(_EDGES, (success, failure, completion), strict=True):
            if value:
                entry[edge] = self.ref(value)

    def last_part(self, step: Step) -> Step:
        number, last = 2, step
        while (part := self.playbook.steps.get(f"{step.id}~{number}")) is not None:
            last, number = part, number + 1
        return last

    def step(self, step: Step) -> None:
        new_id = self.ids[step.id]
        raw = step.extensions.get("cacao")
        if isinstance(raw, dict):
            entry = self.from_cacao(step, raw, new_id)
        else:
            entry = self.native(step, new_id)
        if entry.get("type") not in ("start", "end"):
            self.edges(step, entry)
        elif entry.get("type") == "start":
            for edge in ("on_success", "on_failure"):
                entry.pop(edge, None)
            target = step.on_completion or step.on_success
            if target:
                entry["on_completion"] = self.ref(target)
        self.workflow[new_id] = entry

    def from_cacao(self, step: Step, raw: dict[str, Any], new_id: str) -> dict[str, Any]:
        kind = str(raw.get("type"))
        entry = _pick(raw, _STEP_COMMON + _STEP_KEYS.get(kind, ()))
        if kind == "action":
            commands = [_pick(c, _COMMAND_KEYS) for c in raw.get("commands") or ()]
            if not commands:
                text = step.description or step.name or "A manual step"
                commands = [{"type": "manual", "command": text}]
                self.note(f"$['workflow']['{new_id}']", "no commands: written as manual")
            entry["commands"] = commands
            agent = raw.get("agent")
            entry["agent"] = (
                self.renamed.get(agent, agent) if isinstance(agent, str) else self.operator_agent()
            )
            if entry.get("targets"):
                entry["targets"] = [self.renamed.get(t, t) for t in entry["targets"]]
        if kind == "switch-condition" and not entry.get("switch"):
            entry["switch"] = MISSING_SWITCH
            variables = dict(entry.get("step_variables") or {})
            variables[MISSING_SWITCH] = {
                "type": "string",
                "description": "Not set by the imported playbook: the default case runs.",
            }
            entry["step_variables"] = variables
        for key in ("on_true", "on_false"):
            if key in entry:
                entry[key] = self.ref(entry[key])
        if "next_steps" in entry:
            entry["next_steps"] = [self.ref(s) for s in entry["next_steps"]]
        if "cases" in entry:
            entry["cases"] = {k: self.ref(v) for k, v in entry["cases"].items()}
        if step.kind is StepKind.WHILE and step.max_iterations is not None:
            self.step_extension(entry, {"max_iterations": step.max_iterations})
        return entry

    def operator_agent(self) -> str:
        if self.quell_agent is None:
            self.quell_agent = cacao_id("group", "quell-responders")
            self.agents[self.quell_agent] = {
                "type": "group",
                "name": "Quell responders",
                "description": "The people who complete Quell's manual steps.",
            }
        return self.quell_agent

    def step_extension(self, entry: dict[str, Any], data: dict[str, Any]) -> None:
        extensions = dict(entry.get("step_extensions") or {})
        extensions[QUELL_EXTENSION] = {**extensions.get(QUELL_EXTENSION, {}), **data}
        entry["step_extensions"] = extensions

    def native(self, step: Step, new_id: str) -> dict[str, Any]:
        """A step written in Quell's language: its CACAO form, and in the Quell extension the
        IR step itself (ids mapped), so an import rebuilds it exactly."""
        kind = self.step_type(step)
        entry: dict[str, Any] = {"type": kind}
        if step.name:
            entry["name"] = step.name
        if step.description:
            entry["description"] = step.description
        if step.delay:
            entry["delay"] = int(step.delay * 1000)
        if step.timeout and step.kind is not StepKind.WAIT:
            entry["timeout"] = int(step.timeout * 1000)
        mapped = replace(
            step,
            id=new_id,
            on_success=self.ref(step.on_success),
            on_failure=self.ref(step.on_failure),
            on_completion=self.ref(step.on_completion),
            on_true=self.ref(step.on_true),
            on_false=self.ref(step.on_false),
            default=self.ref(step.default),
            body=self.ref(step.body),
            cases={k: self.ref(v) or v for k, v in step.cases.items()},
            branches=tuple(self.ref(b) or b for b in step.branches),
        )
        data = asdict(mapped)
        for key in ("position", "extensions"):
            data.pop(key)
        data["quell_id"] = step.id
        if step.kind is StepKind.END:
            return entry
        if step.kind is StepKind.IF:
            entry.update(
                condition=self.condition(step.condition or "true", new_id),
                on_true=mapped.on_true,
            )
            if mapped.on_false:
                entry["on_false"] = mapped.on_false
        elif step.kind in (StepKind.WHILE, StepKind.FOR_EACH):
            condition = step.condition if step.kind is StepKind.WHILE else None
            entry["condition"] = self.condition(condition or "true", new_id)
            entry["on_true"] = mapped.on_true if step.kind is StepKind.WHILE else mapped.body
            if step.kind is StepKind.FOR_EACH:
                self.note(
                    f"$['workflow']['{new_id}']",
                    "for_each is written as a while-condition; only Quell runs it as a for-each",
                )
        elif step.kind is StepKind.SWITCH:
            variable = _switch_variable(step.switch or "")
            if variable is None:
                variable = "__quell_switch__"
                entry["step_variables"] = {
                    variable: {"type": "string", "description": f"Quell: {step.switch}"}
                }
            entry["switch"] = variable
            cases = dict(mapped.cases)
            if mapped.default:
                cases["default"] = mapped.default
            entry["cases"] = cases
        elif step.kind is StepKind.PARALLEL:
            entry["next_steps"] = list(mapped.branches)
        elif step.kind is StepKind.PLAYBOOK:
            child = step.playbook or ""
            entry["playbook_id"] = (
                child
                if _ID.match(child) and child.startswith("playbook--")
                else cacao_id("playbook", child)
            )
        else:
            entry["commands"] = [{"type": "manual", "command": self.describe(step)}]
            entry["agent"] = self.operator_agent()
        self.step_extension(entry, {"step": data})
        return entry

    def condition(self, expression: str, where: str) -> str:
        text = expression_to_condition(expression)
        if text is None:
            self.note(
                f"$['workflow']['{where}']",
                "a Quell expression CACAO cannot say: only Quell evaluates it",
            )
            return "true"
        return text

    def describe(self, step: Step) -> str:
        if step.kind is StepKind.WAIT and step.wait is not None:
            prompt = template_to_text(step.wait.prompt or "") if step.wait.prompt else None
            if step.wait.kind is WaitKind.TASK:
                return prompt or step.name or "A manual task"
            if step.wait.kind is WaitKind.APPROVAL:
                return f"Approve: {prompt or step.name or step.id}"
            if step.wait.kind is WaitKind.TIMER:
                return f"Wait: {step.wait.duration or step.wait.until} seconds"
            return f"Wait for an event: {step.name or step.id}"
        if step.kind is StepKind.ACTION:
            return f"Quell action {step.action}: {step.name or step.id}"
        if step.kind is StepKind.SET:
            return f"Set variables: {', '.join(step.assign) or 'none'}"
        if step.kind is StepKind.FAIL:
            return f"Stop: {step.message or 'failed'}"
        return step.name or step.id

    def end_branches(self) -> None:
        """Give every step that leads nowhere (and is not an end) its own end step."""
        for step_id, entry in list(self.workflow.items()):
            if entry.get("type") == "end":
                for edge in _EDGES:
                    entry.pop(edge, None)
                continue
            if any(entry.get(edge) for edge in _EDGES):
                continue
            end_id = cacao_id("end", self.playbook.id, step_id)
            self.workflow[end_id] = {"type": "end"}
            # on_success: a failure still travels up as it did (on_completion would handle it)
            entry["on_completion" if entry.get("type") == "start" else "on_success"] = end_id

    def own_ends(self, start: str | None) -> None:
        """Give each branch its own end step where it shares one with another branch or the
        main flow (CACAO's rule: that is how a runtime tells where a branch ends)."""
        workflow = self.workflow
        regions: list[str] = []
        owner: dict[str, str] = {}  # end step -> the region that keeps it
        seen: set[str] = set()
        pending = [start] if start else []
        while pending:
            region = pending.pop(0)
            if region in seen or region not in workflow:
                continue
            seen.add(region)
            regions.append(region)
            stack, visited = [region], set()
            while stack:
                step_id = stack.pop()
                if step_id in visited or step_id not in workflow:
                    continue
                visited.add(step_id)
                entry = workflow[step_id]
                pending.extend(_branch_starts(entry))
                for edge in _EDGES:
                    target = entry.get(edge)
                    if not isinstance(target, str) or target not in workflow:
                        continue
                    if workflow[target].get("type") == "end":
                        kept = owner.setdefault(target, region)
                        if kept != region:
                            copy_id = cacao_id("end", target, region)
                            workflow.setdefault(
                                copy_id, {"type": "end", **_named(workflow[target])}
                            )
                            entry[edge] = copy_id
                            self.note(
                                f"$['workflow']['{step_id}']",
                                f"its branch shared {target}: given its own end step {copy_id}",
                            )
                    else:
                        stack.append(target)
            # a branch start that is itself an end step belongs to that branch
            if workflow[region].get("type") == "end":
                owner.setdefault(region, region)


def _branch_starts(entry: dict[str, Any]) -> list[str]:
    starts: list[Any] = [entry.get("on_true"), entry.get("on_false")]
    starts.extend(entry.get("next_steps") or ())
    starts.extend((entry.get("cases") or {}).values())
    return [start for start in starts if isinstance(start, str)]


def _named(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: entry[key] for key in ("name", "description") if key in entry}


def _variable_name(name: str, exporter: _Exporter) -> str:
    if _CACAO_NAME.fullmatch(name):
        return name
    cacao = f"__{name}__"
    exporter.note(f"$['playbook_variables']['{cacao}']", f"Quell's variable {name}")
    return cacao


def _switch_variable(expression: str) -> str | None:
    found = re.fullmatch(
        r"\s*vars\[\s*(['\"])(__[a-zA-Z_][a-zA-Z0-9_-]{0,199}__)\1\s*\]\s*", expression
    )
    return found[2] if found else None


def _json_text(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


def export_cacao(
    playbook: Playbook, *, now: datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The playbook as CACAO 2.0 JSON (a dict), and notes on what other tools will not run
    the way Quell does (a Quell expression, a for-each, a renamed id)."""
    exporter = _Exporter(playbook, now or datetime.now(UTC))
    return exporter.export(), exporter.notes


__all__ = ["cacao_id", "export_cacao"]
