"""Validate OASIS CACAO 2.0 playbooks: the official JSON schemas, then what no schema can check.

Two layers, both reported as :class:`CacaoProblem` (a JSON path in jsonschema's ``json_path``
style, a message and a severity):

1. **The official JSON schemas** (51 files rooted at ``playbook.json``). They are not copied
   into Quell: they come from a checkout of github.com/oasis-open/cacao-json-schemas (the
   ``schemas`` folder), found by :func:`schemas_dir`. Without them, or without the jsonschema
   package, only the reference checks run and one warning at ``$`` says so.
2. **Reference checks** the schemas cannot express: every step pointer, agent, target,
   authentication info, marking and extension names something that exists; key prefixes match
   types; every branch runs to its own ``end`` step; no step is unreachable; variable names,
   variable references, constants and switch variables are sound.

Modes
-----
``strict``
    JSON Schema 2020-12 on every schema resource (so ``unevaluatedProperties`` rejects every
    property the spec does not define) plus the reference checks; every finding is an error
    except the two kinds that are warnings in both modes: a ``__variable__`` referenced in a
    command, condition or address that is not declared (a runtime leaves it unset; SOARCA's own
    test playbook does this), and extension data keyed by an undefined extension (ignorable).
``lenient``
    Draft-07, as the schema files declare, plus the reference checks. What published playbooks
    do that CACAO forbids but Quell can still import sensibly is a warning instead of an error.

What lenient tolerates (warnings, not errors)
---------------------------------------------
1. A descriptive step: an ``action`` without ``commands`` and/or ``agent`` (Quell imports it as
   a manual task), and a switch-condition without ``switch`` (a decision described, not
   computed). The TC's own layout example has both. An if- or while-condition without its
   ``condition`` stays an error: there is nothing to branch or loop on.
2. An identifier (agent, target, step or authentication-info id, or a reference to one) not of
   the ``type--uuid`` form, e.g. SOARCA's ``soarca-fin-pong-f896…``: it is used as a name.
3. A ``workflow_exception`` naming a step that does not exist (SOARCA's fixtures): ignored.
4. An end step shared by two flows (a branch ending in the end step of another branch or of
   the main flow): the branch simply ends there.
5. Properties the spec does not define (draft-07 ignores ``unevaluatedProperties``; they are
   found with the 2020-12 validator): each is reported as "not a CACAO 2.0 property: ignored".
   An agent, target or authentication info of a custom type (SOARCA's ``soarca``,
   ``soarca-manual``) is reported once, its properties unchecked.
6. ``workflow_start`` naming a step that is not of type ``start`` (SOARCA's test playbooks start
   at an action or a parallel step): the playbook starts there.
7. A name in ``in_args``/``out_args`` that is not a declared variable.

Defects of the official schemas, worked around here
---------------------------------------------------
- Every file declares ``$schema`` draft-07, and jsonschema picks the validator class from the
  ``$schema`` of each resource a ``$ref`` leads into: a 2020-12 validator silently becomes a
  draft-07 one inside every referenced file, so ``unevaluatedProperties`` would be enforced at
  the top level only. Strict mode rewrites ``$schema`` on every resource.
- ``commands/command-data.json`` is a base that the per-command schemas extend with ``allOf``,
  yet it closes itself with ``unevaluatedProperties: false``; under 2020-12 that refuses
  ``command`` in every command of every playbook. Strict mode removes that keyword from the top
  of any schema another one extends through ``allOf``. (The per-type command schemas are
  referenced from nowhere, so commands are checked for their common fields only.)
- Under 2020-12 a failing subschema drops its annotations, so one bad field makes all its
  siblings "unevaluated". Those follow-on reports are dropped: only keys that no schema reachable
  from the object declares anywhere are reported.
- ``workflow-step.json`` forbids ``on_completion`` together with ``on_success`` in a way that
  never fires; the pointer rules are checked here instead, and the schema's ``not``/``anyOf``
  reports about them are dropped.
"""

from __future__ import annotations

import copy
import os
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urldefrag, urljoin

import orjson

from quell.errors import ConfigurationError, InvalidInput

Mode = Literal["strict", "lenient"]
Severity = Literal["error", "warning"]
# error: in both modes; lenient: an error in strict mode, a warning in lenient; warning: in both
_Level = Literal["error", "lenient", "warning"]
_Parts = tuple[str | int, ...]

SCHEMAS_ENV: Final = "QUELL_CACAO_SCHEMAS"
CORPUS_ENV: Final = "QUELL_CORPUS"
MAX_CACAO_BYTES: Final = 4 * 1024 * 1024
SCHEMAS_MISSING: Final = (
    "the CACAO JSON schemas were not found (set QUELL_CACAO_SCHEMAS): only reference checks ran"
)
JSONSCHEMA_MISSING: Final = "the jsonschema package is not installed: only reference checks ran"

# The five TLP 2.0 marking objects the CACAO TC publishes (Common-Objects/Data-Markings): a
# playbook may reference them without defining them in data_marking_definitions.
TLP_MARKINGS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "marking-tlp--e828b379-4e03-4974-9ac4-e53a884c97c1": "TLP:RED",
        "marking-tlp--939a9414-2ddd-4d32-a0cd-375ea402b003": "TLP:AMBER+STRICT",
        "marking-tlp--55d920b0-5e8b-4f79-9ee9-91f868d9b421": "TLP:AMBER",
        "marking-tlp--bab4a63c-aed9-4cf5-a766-dfca5abac2bb": "TLP:GREEN",
        "marking-tlp--94868c89-83c2-464b-929b-a1a8aa3c8487": "TLP:CLEAR",
    }
)

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-5][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
IDENTIFIER_PATTERN: Final = f"^[a-z][a-z0-9-]+[a-z0-9]--{_UUID}$"
VARIABLE_NAME_PATTERN: Final = "^__[a-zA-Z_][a-zA-Z0-9_-]{0,199}__$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN.strip("^$"))
_VARIABLE_NAME = re.compile(VARIABLE_NAME_PATTERN.strip("^$"))
# A reference is ``__name__:value`` (or the bare ``__name__`` SOARCA writes), not inside a word.
_VARIABLE_REF = re.compile(r"(?<![A-Za-z0-9])__[A-Za-z_][A-Za-z0-9_-]{0,199}?__(?![A-Za-z0-9])")
_PLAIN_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")  # jsonschema's rule for ``.key`` in a path

STEP_TYPES: Final = frozenset(
    {
        "start",
        "end",
        "action",
        "playbook-action",
        "parallel",
        "if-condition",
        "while-condition",
        "switch-condition",
    }
)
AGENT_TARGET_TYPES: Final = frozenset(
    {
        "group",
        "individual",
        "location",
        "organization",
        "sector",
        "http-api",
        "linux",
        "net-address",
        "security-category",
        "ssh",
    }
)
AUTHENTICATION_TYPES: Final = frozenset({"http-basic", "oauth2", "user-auth"})
MARKING_TYPES: Final = frozenset({"marking-statement", "marking-tlp", "marking-iep"})

_NEXT: Final = ("on_completion", "on_success", "on_failure")
# keyed sections: the types their keys may name, and whether a custom type is allowed
_SECTIONS: Final[Mapping[str, tuple[frozenset[str], str]]] = MappingProxyType(
    {
        "agent_definitions": (AGENT_TARGET_TYPES, "agent-target"),
        "target_definitions": (AGENT_TARGET_TYPES, "agent-target"),
        "authentication_info_definitions": (AUTHENTICATION_TYPES, "authentication-info"),
        "data_marking_definitions": (MARKING_TYPES, "data-marking"),
        "extension_definitions": (frozenset({"extension-definition"}), "extension-definition"),
    }
)
_OPEN_SECTIONS: Final = frozenset(
    {"agent_definitions", "target_definitions", "authentication_info_definitions"}
)
_DESCRIPTIVE: Final[Mapping[tuple[str, str], str]] = MappingProxyType(
    {
        ("action", "commands"): "a descriptive step, imported as a manual task",
        ("action", "agent"): "a descriptive step, imported as a manual task",
        ("switch-condition", "switch"): "a descriptive decision",
    }
)
_MAX_MESSAGE = 300


def json_path(parts: Sequence[str | int]) -> str:
    """``$.workflow['action--…'].agent``: the path style jsonschema's ``json_path`` uses."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            path += "." + part
        else:
            path += "['" + part.replace("\\", "\\\\").replace("'", "\\'") + "']"
    return path


@dataclass(frozen=True)
class CacaoProblem:
    """One finding in a CACAO playbook: where (a JSON path), what, and how bad."""

    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{self.path}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API and the CLI's JSON output."""
        return {"path": self.path, "message": self.message, "severity": self.severity}


class CacaoInvalid(InvalidInput):
    """A CACAO playbook refused on import; ``problems`` lists every finding, errors first."""

    def __init__(self, problems: Sequence[CacaoProblem]) -> None:
        ordered = sorted(problems, key=lambda problem: problem.severity != "error")
        errors = sum(1 for problem in ordered if problem.severity == "error")
        if ordered:
            first = ordered[0]
            more = f" (and {errors - 1} more)" if errors > 1 else ""
            message, where = f"{first}{more}", first.path
        else:
            message, where = "the CACAO playbook is not valid", "$"
        super().__init__(message, field=where, problems=[problem.as_dict() for problem in ordered])
        self.problems = ordered


def schemas_dir() -> Path | None:
    """Where the official CACAO 2.0 JSON schemas are, or None.

    The schemas are not part of Quell: point ``$QUELL_CACAO_SCHEMAS`` at the ``schemas`` folder
    of a checkout of github.com/oasis-open/cacao-json-schemas (a ConfigurationError if it holds
    no ``playbook.json``). Without it, the shared test corpus is tried:
    ``$QUELL_CORPUS/cacao/schemas/schemas`` (never a path relative to the current directory:
    what validates a playbook must not depend on where a server was started).
    """
    configured = os.environ.get(SCHEMAS_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not (path / "playbook.json").is_file():
            raise ConfigurationError(
                f"{SCHEMAS_ENV}={configured}: no playbook.json there (it should name the "
                "schemas folder of a cacao-json-schemas checkout)",
                setting=SCHEMAS_ENV,
            )
        return path.resolve()
    candidates = []
    corpus = os.environ.get(CORPUS_ENV)
    if corpus:
        candidates.append(Path(corpus).expanduser() / "cacao" / "schemas" / "schemas")
    for candidate in candidates:
        if (candidate / "playbook.json").is_file():
            return candidate.resolve()
    return None


def load_cacao(text: str | bytes, file: str | None = None) -> dict[str, Any]:
    """Parse a CACAO playbook's JSON; InvalidInput naming line and column when it is not JSON,
    or saying why when it is JSON but not a CACAO 2.0 playbook. Nothing else is checked here."""
    name = file or "playbook"
    if len(text) > MAX_CACAO_BYTES:
        raise InvalidInput(f"{name}: larger than {MAX_CACAO_BYTES} bytes", field="playbook")
    try:
        data = text.encode("utf-8") if isinstance(text, str) else text
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{name}: not UTF-8 text ({exc.reason})", field="playbook") from None
    if len(data) > MAX_CACAO_BYTES:
        raise InvalidInput(f"{name}: larger than {MAX_CACAO_BYTES} bytes", field="playbook")
    if data.startswith(b"\xef\xbb\xbf"):  # editors on Windows write one; orjson refuses it
        data = data[3:]
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"{name}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})",
            field="playbook",
            line=exc.lineno,
            column=exc.colno,
        ) from None
    if not isinstance(doc, dict):
        raise InvalidInput(
            f"{name}: not a CACAO playbook: the document is a JSON {_json_type(doc)}, "
            "not an object",
            field="playbook",
        )
    if doc.get("type") != "playbook":
        raise InvalidInput(
            f"{name}: not a CACAO playbook: type must be 'playbook'{_found(doc, 'type')}",
            field="type",
        )
    if doc.get("spec_version") != "cacao-2.0":
        raise InvalidInput(
            f"{name}: not a CACAO playbook: spec_version must be 'cacao-2.0'"
            f"{_found(doc, 'spec_version')}",
            field="spec_version",
        )
    return doc


def validate_cacao(
    doc: Any, mode: Mode = "lenient", *, schemas: Path | Literal["auto"] | None = "auto"
) -> list[CacaoProblem]:
    """Every problem in a CACAO 2.0 playbook (errors and warnings), sorted by path.

    ``schemas`` is the folder of the official schemas; "auto" asks :func:`schemas_dir` (in
    strict mode, not finding them is an error), and None skips schema validation on purpose
    (one warning at ``$`` says so). Bad input never raises; a
    schemas folder without ``playbook.json`` is a ConfigurationError.
    """
    if mode not in ("strict", "lenient"):
        raise ValueError(f"mode must be 'strict' or 'lenient', not {mode!r}")
    directory = schemas_dir() if schemas == "auto" else schemas
    notices: list[_Finding] = []
    from_schema: list[_Finding] = []
    if directory is None:
        # Strict is JSON Schema 2020-12 over the official schemas: when they cannot be found
        # it cannot be, so it fails; a caller who skips them on purpose (schemas=None) is told.
        missing = schemas == "auto" and mode == "strict"
        notices.append(_Finding((), SCHEMAS_MISSING, "error" if missing else "warning"))
    else:
        from_schema, notices = _schema_findings(doc, Path(directory), mode)
    if isinstance(doc, dict):
        own = _Checks(doc).run()
    else:
        own = [
            _Finding((), f"a CACAO playbook is a JSON object, not {_json_type(doc)}", overlap=True)
        ]
    covered = {finding.parts for finding in from_schema}
    findings = notices + from_schema + [f for f in own if not (f.overlap and f.parts in covered)]
    unique = {(p.path, p.message, p.severity): p for p in (f.problem(mode) for f in findings)}
    return sorted(unique.values(), key=lambda p: (p.path, p.severity != "error", p.message))


# -- findings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finding:
    """A problem before the mode decides its severity."""

    parts: _Parts
    message: str
    level: _Level = "error"
    note: str = ""  # said after the message when it is only a warning
    overlap: bool = False  # the schema checks this too: drop it when the schema spoke here

    def problem(self, mode: Mode) -> CacaoProblem:
        if self.level == "warning" or (self.level == "lenient" and mode == "lenient"):
            message = f"{self.message}: {self.note}" if self.note else self.message
            return CacaoProblem(json_path(self.parts), message, "warning")
        return CacaoProblem(json_path(self.parts), self.message)


def _not_identifier(parts: _Parts, value: str) -> _Finding:
    """An id or reference not of the ``type--uuid`` form; tolerated where SOARCA uses names."""
    tolerated = (
        parts in (("workflow_start",), ("workflow_exception",))
        or (len(parts) == 2 and parts[0] in {"workflow", *_OPEN_SECTIONS})
        or (
            len(parts) >= 3
            and parts[0] == "workflow"
            and parts[2]
            in {"agent", "targets", "next_steps", "cases", "on_true", "on_false", *_NEXT}
        )
        or (
            len(parts) == 3
            and parts[0] in ("agent_definitions", "target_definitions")
            and parts[2] == "authentication_info"
        )
    )
    return _Finding(
        parts,
        f"{_short(value)} is not a CACAO identifier (type--uuid)",
        "lenient" if tolerated else "error",
        note="accepted as a name",
        overlap=True,
    )


def _missing(parts: _Parts, step_type: Any, name: str, *, overlap: bool = False) -> _Finding:
    """A step without a property its type requires; descriptive steps are tolerated."""
    if not isinstance(step_type, str):
        return _Finding(parts, f"{name!r} is a required property", overlap=overlap)
    note = _DESCRIPTIVE.get((step_type, name))
    return _Finding(
        parts,
        f"{step_type} step without '{name}'",
        "lenient" if note else "error",
        note=note or "",
        overlap=overlap,
    )


def _bad_variable_name(parts: _Parts, name: str) -> _Finding:
    return _Finding(parts, f"variable name {_short(name)} does not match {VARIABLE_NAME_PATTERN}")


def _unknown_key(container: _Parts, key: str, value: Any) -> _Finding | None:
    """A key that no schema declares, said in the words of the section it is in."""
    parts = (*container, key)
    if len(container) == 1 and container[0] in {"workflow", *_SECTIONS}:
        section = container[0]
        if not _is_identifier(key):
            return _not_identifier(parts, key)
        if section == "workflow":
            return None  # an unknown step type: the reference checks say so at .type
        types, noun = _SECTIONS[section]
        declared = value.get("type") if isinstance(value, dict) else None
        kind = declared if isinstance(declared, str) else key.split("--", 1)[0]
        if section not in _OPEN_SECTIONS:
            return _Finding(parts, f"{_short(kind)} is not a CACAO 2.0 {noun} type")
        if kind in types:
            return None  # a standard type under another key prefix: reported at .type
        return _Finding(
            parts,
            f"{_short(kind)} is not a CACAO 2.0 {noun} type",
            "lenient",
            note="a custom type: its properties are not checked",
        )
    if container and container[-1] in ("playbook_variables", "step_variables"):
        return _bad_variable_name(parts, key)
    if container and isinstance(container[-1], str) and container[-1].endswith("_extensions"):
        return _Finding(
            parts, f"{_short(key)} is not an extension-definition id", "lenient", "ignored"
        )
    return _Finding(parts, "not a CACAO 2.0 property", "lenient", note="ignored")


# -- the official schemas ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Known:
    names: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    def allows(self, key: str) -> bool:
        return key in self.names or any(pattern.search(key) for pattern in self.patterns)


@dataclass(eq=False)
class _Schemas:
    """A validator over the schema folder, and what is needed to read its reports."""

    validator: Any
    resources: dict[str, Any]  # $id -> contents, as the validator sees them
    bases: dict[int, str]  # id() of every schema object -> the $id of its resource
    root: str
    _known: dict[int, _Known | None] = field(default_factory=dict)

    def known(self, schema: Mapping[str, Any]) -> _Known | None:
        """Every key that ``schema`` or anything it applies could declare (None: any key).

        Under 2020-12, ``unevaluatedProperties`` counts a key only when the subschema declaring
        it passed, so one bad value makes its siblings look undeclared. Reading the declarations
        statically reports only keys that no schema defines.
        """
        if id(schema) not in self._known:
            self._known[id(schema)] = self._collect(schema)
        return self._known[id(schema)]

    def _collect(self, schema: Mapping[str, Any]) -> _Known | None:
        names: set[str] = set()
        patterns: list[str] = []
        seen: set[int] = set()
        todo: list[Any] = [schema]
        while todo:
            node = todo.pop()
            if not isinstance(node, dict) or id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node.get("properties"), dict):
                names.update(node["properties"])
            if isinstance(node.get("patternProperties"), dict):
                patterns.extend(node["patternProperties"])
            if node.get("additionalProperties") not in (None, False):
                return None
            if node is not schema and node.get("unevaluatedProperties") not in (None, False):
                return None
            if isinstance(node.get("$ref"), str):
                todo.append(self._resolve(node["$ref"], self.bases.get(id(node), self.root)))
            for keyword in ("allOf", "anyOf", "oneOf"):
                if isinstance(node.get(keyword), list):
                    todo.extend(node[keyword])
            todo.extend(node.get(keyword) for keyword in ("if", "then", "else"))
            if isinstance(node.get("dependentSchemas"), dict):
                todo.extend(node["dependentSchemas"].values())
        return _Known(frozenset(names), tuple(re.compile(p) for p in patterns))

    def _resolve(self, ref: str, base: str) -> Any:
        uri, fragment = urldefrag(urljoin(base, ref))
        node = self.resources.get(uri or base)
        for token in fragment.lstrip("/").split("/") if fragment else ():
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                node = node.get(token)
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return None
        return node


def _read_schemas(directory: Path) -> tuple[str, dict[str, Any]]:
    """Every schema file by its ``$id``, and the id of ``playbook.json``."""
    resources: dict[str, Any] = {}
    root = ""
    for path in sorted(directory.rglob("*.json")):
        try:
            contents = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigurationError(f"{path}: not a readable JSON schema ({exc})") from None
        if not isinstance(contents, dict) or not isinstance(contents.get("$id"), str):
            raise ConfigurationError(f"{path}: a CACAO schema file without an $id")
        resources[contents["$id"]] = contents
        if path == directory / "playbook.json":
            root = contents["$id"]
    if not root:
        raise ConfigurationError(f"{directory}: no playbook.json (the CACAO schemas' root)")
    return root, resources


def _as_2020_12(resources: dict[str, Any]) -> dict[str, Any]:
    """The schemas as 2020-12 (see the module docstring for why each change is needed)."""
    resources = copy.deepcopy(resources)
    extended: set[str] = set()
    for uri, contents in resources.items():
        contents["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        for node in _walk(contents):
            for item in node.get("allOf") or ():
                if isinstance(item, dict) and isinstance(item.get("$ref"), str):
                    extended.add(urldefrag(urljoin(uri, item["$ref"]))[0])
    for uri in extended:
        if uri in resources:
            resources[uri].pop("unevaluatedProperties", None)
    return resources


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every object inside a schema (iteratively: schemas can nest deeply)."""
    todo = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            yield item
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


@cache
def _schemas(directory: Path, mode: Mode) -> _Schemas:
    """The validator for a schema folder and a mode, built once (the registry is slow-ish)."""
    from jsonschema import Draft7Validator, Draft202012Validator  # type: ignore[import-untyped]
    from referencing import Registry
    from referencing.jsonschema import DRAFT7, DRAFT202012

    root, resources = _read_schemas(directory)
    if mode == "strict":
        resources = _as_2020_12(resources)
        spec, validator_class = DRAFT202012, Draft202012Validator
    else:
        spec, validator_class = DRAFT7, Draft7Validator
    registry: Registry[Any] = Registry().with_resources(
        (uri, spec.create_resource(contents)) for uri, contents in resources.items()
    )
    bases = {id(node): uri for uri, contents in resources.items() for node in _walk(contents)}
    validator = validator_class(resources[root], registry=registry.crawl())
    return _Schemas(validator, resources, bases, root)


def _schema_findings(
    doc: Any, directory: Path, mode: Mode
) -> tuple[list[_Finding], list[_Finding]]:
    """The schema's reports as findings (in lenient mode, plus 2020-12's undeclared keys), and
    notices about the validation itself."""
    if not (directory / "playbook.json").is_file():
        raise ConfigurationError(f"{directory}: no playbook.json (the CACAO schemas' root)")
    try:
        strict = _schemas(directory.resolve(), "strict")
        main = strict if mode == "strict" else _schemas(directory.resolve(), "lenient")
    except ImportError:  # jsonschema is a development dependency of Quell
        return [], [_Finding((), JSONSCHEMA_MISSING, "warning")]
    findings: list[_Finding] = []
    try:
        for error in main.validator.iter_errors(doc):
            findings.extend(_from_error(error, main))
        if mode == "lenient":
            # draft-07 ignores unevaluatedProperties; ask 2020-12 which keys nothing declares
            for error in strict.validator.iter_errors(doc):
                if error.validator == "unevaluatedProperties":
                    findings.extend(_unevaluated(error, strict))
    except RecursionError:
        return findings, [_Finding((), "the document is nested too deeply to validate")]
    return findings, []


def _from_error(error: Any, schemas: _Schemas) -> list[_Finding]:
    """One jsonschema error as findings, in the categories lenient mode tolerates."""
    parts: _Parts = tuple(error.absolute_path)
    instance = error.instance
    if error.validator == "unevaluatedProperties":
        return _unevaluated(error, schemas)
    if len(parts) == 2 and parts[0] == "workflow":
        if error.validator in ("not", "anyOf"):
            return []  # the pointer rules, checked (and worded) by the reference checks
        if error.validator == "required" and isinstance(instance, dict):
            missing = [name for name in error.validator_value if name not in instance]
            return [_missing(parts, instance.get("type"), name) for name in missing]
    identifier = error.validator == "pattern" and error.validator_value == IDENTIFIER_PATTERN
    if identifier and isinstance(instance, str):
        return [_not_identifier(parts, instance)]
    if parts and parts[0] == "authentication_info_definitions":
        # jsonschema's message quotes the value, and here a value may be a password.
        return [_Finding(parts, f"fails the schema's {error.validator!r} check")]
    return [_Finding(parts, _shorten(error.message))]


def _unevaluated(error: Any, schemas: _Schemas) -> list[_Finding]:
    instance = error.instance
    if not isinstance(instance, dict) or not isinstance(error.schema, dict):
        return []
    known = schemas.known(error.schema)
    if known is None:
        return []
    container: _Parts = tuple(error.absolute_path)
    findings = []
    for key, value in instance.items():
        if isinstance(key, str) and not known.allows(key):
            finding = _unknown_key(container, key, value)
            if finding is not None:
                findings.append(finding)
    return findings


# -- reference checks --------------------------------------------------------------------------


def _pointers(step: Mapping[str, Any]) -> list[tuple[_Parts, str, bool]]:
    """A step's pointers to other steps: (path inside the step, target, opens a branch)."""
    found: list[tuple[_Parts, str, bool]] = [
        ((name,), step[name], False) for name in _NEXT if isinstance(step.get(name), str)
    ]
    kind = step.get("type")
    branches = {"if-condition": ("on_true", "on_false"), "while-condition": ("on_true",)}
    for name in branches.get(kind, ()) if isinstance(kind, str) else ():
        if isinstance(step.get(name), str):
            found.append(((name,), step[name], True))
    cases = step.get("cases")
    if kind == "switch-condition" and isinstance(cases, dict):
        found += [(("cases", case), t, True) for case, t in cases.items() if isinstance(t, str)]
    next_steps = step.get("next_steps")
    if kind == "parallel" and isinstance(next_steps, list):
        found += [
            (("next_steps", i), t, True) for i, t in enumerate(next_steps) if isinstance(t, str)
        ]
    return found


class _Checks:
    """What the schemas cannot check: references, the branch structure, variables."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.found: list[_Finding] = []
        self.workflow: dict[str, dict[str, Any]] = {
            key: step
            for key, step in _mapping(doc.get("workflow")).items()
            if isinstance(step, dict)
        }
        self.sections = {name: _mapping(doc.get(name)) for name in _SECTIONS}
        self.variables = _mapping(doc.get("playbook_variables"))
        start, exception = doc.get("workflow_start"), doc.get("workflow_exception")
        self.start = start if isinstance(start, str) and start in self.workflow else None
        self.exception = (
            exception if isinstance(exception, str) and exception in self.workflow else None
        )

    def add(self, parts: _Parts, message: str, level: _Level = "error", **extra: Any) -> None:
        self.found.append(_Finding(parts, message, level, **extra))

    def run(self) -> list[_Finding]:
        self.check_header()
        self.check_definitions()
        for key, step in self.workflow.items():
            self.check_step(key, step)
        self.check_flows()
        self.check_reachable()
        self.check_markings_and_extensions()
        self.check_variables()
        return self.found

    def check_header(self) -> None:
        if self.doc.get("type") != "playbook":
            self.add(("type",), "type must be 'playbook'", overlap=True)
        if self.doc.get("spec_version") != "cacao-2.0":
            self.add(("spec_version",), "spec_version must be 'cacao-2.0'", overlap=True)
        start = self.doc.get("workflow_start")
        if isinstance(start, str):
            self.reference(("workflow_start",), start)
            step = self.workflow.get(start)
            if step is None:
                self.add(("workflow_start",), f"{_short(start)} is not a step in the workflow")
            elif step.get("type") != "start":
                kind = _short(step.get("type"))
                self.add(
                    ("workflow_start",),
                    f"{_short(start)} is a step of type {kind}, not a start step",
                    "lenient",
                    note="the playbook starts there",
                )
        exception = self.doc.get("workflow_exception")
        if isinstance(exception, str):
            self.reference(("workflow_exception",), exception)
            if exception not in self.workflow:
                self.add(
                    ("workflow_exception",),
                    f"{_short(exception)} is not a step in the workflow",
                    "lenient",
                    note="ignored",
                )

    def reference(self, parts: _Parts, value: str) -> None:
        if not _is_identifier(value):
            self.found.append(_not_identifier(parts, value))

    def check_definitions(self) -> None:
        auths = self.sections["authentication_info_definitions"]
        for section, entries in self.sections.items():
            types = _SECTIONS[section][0]
            for key, entry in entries.items():
                parts: _Parts = (section, key)
                if not _is_identifier(key):
                    self.found.append(_not_identifier(parts, key))
                if not isinstance(entry, dict):
                    continue
                kind = entry.get("type")
                prefix = key.split("--", 1)[0] if "--" in key else None
                standard = prefix in types or kind in types
                if isinstance(kind, str) and prefix and prefix != kind and standard:
                    message = f"type {_short(kind)} does not match the key prefix '{prefix}--'"
                    self.add((*parts, "type"), message, overlap=True)
                if section == "data_marking_definitions":
                    own_id = entry.get("id")
                    if isinstance(own_id, str) and own_id != key:
                        self.add((*parts, "id"), f"the id {_short(own_id)} differs from its key")
                auth = entry.get("authentication_info")
                if section in ("agent_definitions", "target_definitions") and isinstance(auth, str):
                    self.reference((*parts, "authentication_info"), auth)
                    if auth not in auths:
                        message = f"{_short(auth)} is not in authentication_info_definitions"
                        self.add((*parts, "authentication_info"), message)

    def check_step(self, key: str, step: Mapping[str, Any]) -> None:
        parts: _Parts = ("workflow", key)
        if not _is_identifier(key):
            self.found.append(_not_identifier(parts, key))
        kind = step.get("type")
        if not isinstance(kind, str):
            self.add(parts, "'type' is a required property", overlap=True)
            return
        if kind not in STEP_TYPES:
            self.add((*parts, "type"), f"{_short(kind)} is not a CACAO 2.0 step type", overlap=True)
        elif "--" in key and key.split("--", 1)[0] != kind:
            prefix = key.split("--", 1)[0]
            message = f"type {_short(kind)} does not match the key prefix '{prefix}--'"
            self.add((*parts, "type"), message, overlap=True)
        if "on_completion" in step and ("on_success" in step or "on_failure" in step):
            message = "on_completion cannot be combined with on_success or on_failure"
            self.add((*parts, "on_completion"), message)
        forbidden = {"start": ("on_success", "on_failure"), "end": _NEXT}.get(kind, ())
        for name in forbidden:
            if name in step:
                self.add((*parts, name), f"{kind} steps cannot have {name}")
        for inner, target, _ in _pointers(step):
            self.reference((*parts, *inner), target)
            if target not in self.workflow:
                self.add((*parts, *inner), f"{_short(target)} is not a step in the workflow")
        required = {
            "action": ("commands", "agent"),
            "playbook-action": ("playbook_id",),
            "parallel": ("next_steps",),
            "if-condition": ("condition", "on_true"),
            "while-condition": ("condition", "on_true"),
            "switch-condition": ("switch", "cases"),
        }
        for name in required.get(kind, ()):
            if name not in step:
                self.found.append(_missing(parts, kind, name, overlap=True))
        next_steps = step.get("next_steps")
        if kind == "parallel" and isinstance(next_steps, list) and len(next_steps) < 2:
            message = "a parallel step needs at least 2 next_steps"
            self.add((*parts, "next_steps"), message, overlap=True)
        switch = step.get("switch")
        if (
            isinstance(switch, str)
            and kind == "switch-condition"
            and not _VARIABLE_REF.search(switch)
        ):
            message = f"switch must name a variable (__name__:value), not {_short(switch)}"
            self.add((*parts, "switch"), message)
        playbook_id = step.get("playbook_id")
        if kind == "playbook-action" and _names_no_playbook(playbook_id):
            message = f"{_short(playbook_id)} is not the id of a playbook (playbook--…)"
            self.add((*parts, "playbook_id"), message)
        agent = step.get("agent")
        if isinstance(agent, str):
            self.reference((*parts, "agent"), agent)
            if agent not in self.sections["agent_definitions"]:
                self.add((*parts, "agent"), f"{_short(agent)} is not in agent_definitions")
        for i, target in _strings(step.get("targets")):
            self.reference((*parts, "targets", i), target)
            if target not in self.sections["target_definitions"]:
                self.add((*parts, "targets", i), f"{_short(target)} is not in target_definitions")

    def check_flows(self) -> None:
        """Each branch runs along next pointers to an end step of its own.

        A flow is the main flow (from workflow_start) or a branch (opened by on_true, on_false,
        cases or next_steps); it owns every step it reaches along on_completion, on_success and
        on_failure. A step reached by two flows is a join (an error) unless it is an end step
        (a shared end, tolerated in lenient mode). Every step is owned once, every pointer
        opens at most one flow, so loops of any kind end the walk.
        """
        if self.start is None:
            return
        owner: dict[str, int] = {}
        labels: list[str] = []
        self.walk_flows(deque([("the main flow", self.start, None)]), owner, labels, joins=True)
        if self.exception is not None:
            # the exception handler may reuse the main flow's steps (SOARCA's end on exception)
            entry = ("the workflow_exception flow", self.exception, ("workflow_exception",))
            self.walk_flows(deque([entry]), owner, labels, joins=False)

    def walk_flows(
        self,
        pending: deque[tuple[str, str, _Parts | None]],
        owner: dict[str, int],
        labels: list[str],
        *,
        joins: bool,
    ) -> None:
        while pending:
            label, entry, via = pending.popleft()
            if entry not in self.workflow:
                continue  # dangling: reported by check_step
            if entry in owner:
                if joins and via is not None:
                    self.joined(via, label, entry, labels[owner[entry]])
                continue
            flow = len(labels)
            labels.append(label)
            owner[entry] = flow
            todo = [entry]
            while todo:
                key = todo.pop()
                step = self.workflow[key]
                if step.get("type") == "end":
                    continue
                pointers = _pointers(step)
                for inner, target, opens in pointers:
                    if opens:
                        name = "case " + repr(inner[1]) if inner[0] == "cases" else _inner(inner)
                        branch = f"the branch from {key} ({name})"
                        pending.append((branch, target, ("workflow", key, *inner)))
                if not any(name in step for name in _NEXT):
                    self.add(("workflow", key), f"{label} reaches {key}, which is not an end step")
                    continue
                for inner, target, opens in pointers:
                    if opens or target not in self.workflow:
                        continue
                    if target not in owner:
                        owner[target] = flow
                        todo.append(target)
                    elif owner[target] != flow and joins:
                        self.joined(("workflow", key, *inner), label, target, labels[owner[target]])

    def joined(self, via: _Parts, label: str, target: str, other: str) -> None:
        if self.workflow[target].get("type") == "end":
            message = (
                f"{label} ends in {target}, the end step of {other}; "
                "each branch needs its own end step"
            )
            self.add(via, message, "lenient", note="accepted")
        else:
            self.add(via, f"{label} joins {other} at {target}")

    def check_reachable(self) -> None:
        if self.start is None:
            return
        seen = {self.start} | ({self.exception} if self.exception else set())
        todo = list(seen)
        while todo:
            for _, target, _ in _pointers(self.workflow[todo.pop()]):
                if target in self.workflow and target not in seen:
                    seen.add(target)
                    todo.append(target)
        for key in self.workflow:
            if key not in seen:
                self.add(("workflow", key), f"step {key} is not reachable from workflow_start")

    def objects(self) -> Iterator[tuple[_Parts, Mapping[str, Any], str]]:
        """Every object that may carry markings or extensions, and its extensions property."""
        yield (), self.doc, "playbook_extensions"
        for key, step in self.workflow.items():
            yield ("workflow", key), step, "step_extensions"
        extensions = {
            "agent_definitions": "agent_target_extensions",
            "target_definitions": "agent_target_extensions",
            "authentication_info_definitions": "authentication_info_extensions",
            "data_marking_definitions": "marking_extensions",
        }
        for section, entries in self.sections.items():
            for key, entry in entries.items():
                if isinstance(entry, dict):
                    yield (section, key), entry, extensions.get(section, "")

    def check_markings_and_extensions(self) -> None:
        markings = self.sections["data_marking_definitions"]
        extensions = self.sections["extension_definitions"]
        for parts, entry, property_name in self.objects():
            for i, marking in _strings(entry.get("markings")):
                if marking not in markings and marking not in TLP_MARKINGS:
                    message = (
                        f"{_short(marking)} is not in data_marking_definitions "
                        "nor a standard TLP marking"
                    )
                    self.add((*parts, "markings", i), message)
            for key in _mapping(entry.get(property_name)) if property_name else ():
                if key not in extensions:
                    message = f"{_short(key)} is not in extension_definitions"
                    self.add(
                        (*parts, property_name, key), message, "warning", note="its data is ignored"
                    )

    def check_variables(self) -> None:
        """Variable names, references to undeclared variables, constants written back."""
        playbook_vars = set(self.variables)
        for name in self.variables:
            if not _VARIABLE_NAME.fullmatch(name):
                self.found.append(_bad_variable_name(("playbook_variables", name), name))
        users: dict[str, set[str]] = {}  # agent/target id -> step variables of steps using it
        for key, step in self.workflow.items():
            parts: _Parts = ("workflow", key)
            own = _mapping(step.get("step_variables"))
            for name in own:
                if not _VARIABLE_NAME.fullmatch(name):
                    self.found.append(_bad_variable_name((*parts, "step_variables", name), name))
            declared = playbook_vars | set(own)
            for used in [step.get("agent"), *(t for _, t in _strings(step.get("targets")))]:
                if isinstance(used, str):
                    users.setdefault(used, set()).update(own)
            for i, command in enumerate(step.get("commands") or ()):
                if not isinstance(command, dict):
                    continue
                for name in ("command", "content"):
                    self.references((*parts, "commands", i, name), command.get(name), declared)
                for header, values in _mapping(command.get("headers")).items():
                    for j, value in _strings(values):
                        self.references(
                            (*parts, "commands", i, "headers", header, j), value, declared
                        )
            for name in ("condition", "switch"):
                self.references((*parts, name), step.get(name), declared)
            for name in ("in_args", "out_args"):
                for i, arg in _strings(step.get(name)):
                    if arg not in declared:
                        self.add(
                            (*parts, name, i),
                            f"{_short(arg)} is not a declared variable",
                            "lenient",
                            note="a runtime leaves it unset",
                        )
                    declaration = own.get(arg, self.variables.get(arg))
                    constant = isinstance(declaration, dict) and declaration.get("constant") is True
                    if name == "out_args" and constant:
                        message = f"{_short(arg)} is a constant: a step cannot write it back"
                        self.add((*parts, name, i), message)
        for section in ("agent_definitions", "target_definitions"):
            for key, entry in self.sections[section].items():
                if not isinstance(entry, dict):
                    continue
                declared = playbook_vars | users.get(key, set())
                for kind, values in _mapping(entry.get("address")).items():
                    for j, value in _strings(values):
                        self.references((section, key, "address", kind, j), value, declared)
                self.references((section, key, "port"), entry.get("port"), declared)

    def references(self, parts: _Parts, text: Any, declared: set[str]) -> None:
        if not isinstance(text, str):
            return
        for name in dict.fromkeys(match.group() for match in _VARIABLE_REF.finditer(text)):
            if name not in declared:
                message = f"{_short(name)} is not a declared variable"
                self.add(parts, message, "warning", note="a runtime leaves it unset")


# -- small helpers -----------------------------------------------------------------------------


def _is_identifier(value: str) -> bool:
    return _IDENTIFIER.fullmatch(value) is not None


def _names_no_playbook(value: Any) -> bool:
    return isinstance(value, str) and not value.startswith("playbook--")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[tuple[int, str]]:
    return (
        [(i, v) for i, v in enumerate(value) if isinstance(v, str)]
        if isinstance(value, list)
        else []
    )


def _inner(parts: _Parts) -> str:
    return json_path(parts).removeprefix("$.").removeprefix("$")


def _short(value: Any) -> str:
    """``repr`` of a value from the document, cut so a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


_USERINFO = re.compile(r"(://)[^/@\s'\"]*@")


def _shorten(message: str) -> str:
    """A message for people: bounded, and never quoting the user:password of a URL."""
    message = _USERINFO.sub(r"\1***@", message)
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def _found(doc: Mapping[str, Any], name: str) -> str:
    return f" (it is {_short(doc[name])})" if name in doc else " (it is missing)"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
