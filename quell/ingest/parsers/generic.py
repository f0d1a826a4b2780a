"""Generic JSON with a declarative field mapping per source, written as JMESPath.

A source's options say where each alert field is found in its records; no code is needed::

    {
      "fields": {
        "title":    "detection.name",
        "time":     "\\"@timestamp\\"",
        "severity": "detection.level",
        "rule_uid": "detection.id",
        "src.ip":   "network.client || network.src_ip",
        "user":     "actor.login",
        "file.sha256": "artifacts[?kind=='file'].sha256 | [0]",
        "techniques":  "detection.attack_ids",
        "extra.tenant": "tenant.id"
      },
      "severity_map": {"crit": 5, "warn": "medium"},
      "defaults": {"product": "Acme EDR", "vendor": "Acme", "severity": "low"},
      "match": "kind == 'detection'"
    }

Targets: ``title``, ``time``, ``severity``, ``uid``, ``rule_uid``, ``rule_name``,
``category``, ``description``, ``product``, ``vendor``, ``user``, ``url``, ``techniques``;
``src.``/``dst.``/``host.`` + ``ip``/``port``/``hostname``; ``file.`` + ``name``/``path``/
``size``/``md5``/``sha1``/``sha256``/``mime_type``; ``email.`` + ``sender``/``reply_to``/
``to``/``cc``/``subject``/``message_id``; and ``extra.<name>``, which keeps whatever JSON the
expression yields. An expression that yields an array for a single-valued target gives its
first element.

Decisions:

- Without ``fields``, :data:`DEFAULT_FIELDS` reads the names most JSON alerts use (``title``/
  ``name``/``message``, ``@timestamp``/``timestamp``/``time``/``ts``, ``severity``/``level``,
  ``src_ip``, ``hostname``, ``user`` and the like), so ``quell ingest --format json FILE``
  works on a first try; a record it cannot read is dead-lettered saying which field is
  missing, and a mapping fixes it for good.
- ``fields.title`` is required. ``fields.time`` is required too, unless ``defaults.time`` is
  set: either a fixed timestamp, or ``"now"``, the wall-clock time of parsing, for sources
  that send no time at all (a replay from the dead-letter store then gets the replay time).
  A record whose time expression yields nothing and has no default is a ParseError: a made-up
  time would silently skew dedup windows and timelines.
- ``defaults`` fill a target whose expression is absent or yields nothing (null, ``""``, ``[]``).
- ``match``, when set, is an expression a record must make truthy to be an alert; other
  records are NotAnAlert (counted as suppressed, like Suricata's non-alert events).
- Expressions, default values and the severity map are checked when the parser is built: a bad
  expression, an unknown function, an unknown target or option raises ParseError naming it
  (``fields.src.ip``), which the registry reports as invalid options.

Severity: a number that is an OCSF ``severity_id`` (0-6, 99) is taken as is. Text is looked up
in ``severity_map`` (case-insensitive; values are severity ids or labels), then among OCSF's
labels (``informational``/``info``, ``low``, ``medium``, ``high``, ``critical``, ``fatal``,
``unknown``, ``other``), then read as a number. A value found nowhere takes
``defaults.severity``, or is a ParseError naming it when there is no default, so that the
mapping gets fixed and the dead letters replayed. No severity expression: Unknown (0).

Simple paths (``a.b."c-d"``, ``a[0]``, ``a || b``, literals) are evaluated by a direct walk
that gives the same answers as JMESPath at a fraction of its cost; anything else runs through
the ``jmespath`` library, compiled once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import jmespath  # type: ignore[import-untyped,unused-ignore]
from jmespath import exceptions as jmespath_errors  # type: ignore[import-untyped,unused-ignore]
from jmespath.functions import Functions  # type: ignore[import-untyped,unused-ignore]

from quell.codec import json_type
from quell.ingest.model import Alert, EmailInfo, Endpoint, FileInfo, Severity
from quell.ingest.parsers.base import (
    NotAnAlert,
    ParseError,
    Parser,
    ParseResult,
    RecordKind,
)
from quell.ingest.parsers.base import parse_time as _parse_time
from quell.ingest.parsers.coerce import (
    SEVERITY_LABELS,
    file_hash,
    first_integer,
    first_text,
    hostname,
    ip,
    items,
    port,
    severity_option,
    techniques,
    text_list,
)

Getter = Callable[[Any], Any]

_TEXT = ("title", "uid", "rule_uid", "rule_name", "category", "description", "product")
_TEXT_TARGETS = frozenset((*_TEXT, "vendor", "user", "url"))
_ENDPOINT_TARGETS = frozenset(
    f"{side}.{part}" for side in ("src", "dst", "host") for part in ("ip", "port", "hostname")
)
_FILE_TARGETS = frozenset(
    f"file.{part}" for part in ("name", "path", "size", "md5", "sha1", "sha256", "mime_type")
)
_EMAIL_TARGETS = frozenset(
    f"email.{part}" for part in ("sender", "reply_to", "to", "cc", "subject", "message_id")
)
TARGETS = frozenset(
    {"time", "severity", "techniques"}
    | _TEXT_TARGETS
    | _ENDPOINT_TARGETS
    | _FILE_TARGETS
    | _EMAIL_TARGETS
)
_OPTIONS = frozenset({"fields", "severity_map", "defaults", "match"})
_HASH_LENGTH = {"md5": 32, "sha1": 40, "sha256": 64}
_RUNTIME_ERRORS = (
    jmespath_errors.JMESPathError,
    ValueError,
    TypeError,
    KeyError,
    RecursionError,
    OverflowError,
)
_FUNCTIONS: dict[str, Any] = Functions().FUNCTION_TABLE
_SEVERITY_IDS = frozenset(int(level) for level in Severity)


def _nothing(value: Any) -> bool:
    return value is None or value == "" or value == []


def _falsy(value: Any) -> bool:
    """JMESPath's notion of false: null, false, and empty strings, arrays and objects."""
    if value is None or value is False:
        return True
    return isinstance(value, str | list | dict) and not value


def _check_functions(node: Any, where: str) -> None:
    """Find unknown functions and wrong arity now: jmespath finds them only when searching."""
    if not isinstance(node, dict):
        return
    if node.get("type") == "function_expression":
        name = str(node.get("value"))
        entry = _FUNCTIONS.get(name)
        if entry is None:
            raise ParseError(f"unknown JMESPath function {name!r} in {where}", field=where)
        signature = entry["signature"]
        count = len(node.get("children", ()))
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if count < len(signature) or (count > len(signature) and not variadic):
            raise ParseError(
                f"JMESPath function {name!r} in {where} takes "
                f"{len(signature)}{' or more' if variadic else ''} argument(s), not {count}",
                field=where,
            )
    for child in node.get("children", ()):
        _check_functions(child, where)


def _walker(node: dict[str, Any]) -> Getter | None:
    """A direct evaluator for the simple JMESPath shapes, or None for the others."""
    kind = node.get("type")
    if kind == "field":
        key = node["value"]
        return lambda value: value.get(key) if isinstance(value, dict) else None
    if kind == "literal":
        constant = node["value"]
        if isinstance(constant, list | dict):
            # A shared array or object would leak one alert's later edits into the next.
            return lambda value: copy.deepcopy(constant)
        return lambda value: constant
    if kind == "subexpression":
        steps = [_walker(child) for child in node["children"]]
        if any(step is None for step in steps):
            return None
        chain = [step for step in steps if step is not None]

        def walk(value: Any) -> Any:
            for step in chain:
                value = step(value)
                if value is None:
                    return None
            return value

        return walk
    if kind == "index_expression":
        left, index = node["children"]
        base = _walker(left)
        if base is None or index.get("type") != "index":
            return None
        position = index["value"]

        def pick(value: Any) -> Any:
            found = base(value)
            if not isinstance(found, list) or not -len(found) <= position < len(found):
                return None
            return found[position]

        return pick
    if kind == "or_expression":
        first, second = (_walker(child) for child in node["children"])
        if first is None or second is None:
            return None

        def either(value: Any) -> Any:
            found = first(value)
            return second(value) if _falsy(found) else found

        return either
    return None


def compile_expression(expression: Any, where: str) -> Getter:
    """A function of one record for a JMESPath ``expression``; ParseError names ``where``."""
    if not isinstance(expression, str) or not expression.strip():
        raise ParseError(f"{where} must be a non-empty JMESPath expression", field=where)
    try:
        compiled = jmespath.compile(expression)
    except jmespath_errors.JMESPathError as exc:
        # jmespath's text is "<what>:\n<expression>\n<caret>": one line, with where it broke.
        detail = str(exc).splitlines()[0].rstrip(": ")
        position = getattr(exc, "lex_position", None)
        if isinstance(position, int) and "column" not in detail:
            detail += f" at character {position + 1} of {expression!r}"
        raise ParseError(f"invalid JMESPath in {where}: {detail}", field=where) from None
    _check_functions(compiled.parsed, where)
    search: Getter = compiled.search
    return _walker(compiled.parsed) or search


def _default(target: str, value: Any) -> Any:
    """A default value checked and converted once, as the record's value would be."""
    where = f"defaults.{target}"
    if target == "time":
        if value == "now":
            return value
        return _parse_time(value, where)
    if target == "severity":
        return severity_option(value, where)
    if target.startswith("extra."):
        return value
    converted = _convert(target, value, where)
    if converted is None:
        raise ParseError(f"{where} is not a usable value for {target!r}", field=where)
    return converted


def _convert(target: str, value: Any, where: str) -> Any:
    """The typed value of ``target`` from what its expression yielded (time and severity aside)."""
    if target in _TEXT_TARGETS:
        return first_text(value, where)
    if target == "techniques":
        found: list[str] = []
        techniques(items(value, where), where, found)
        return found or None
    part = target.partition(".")[2]
    if part == "ip":
        return ip(value, where)
    if part == "port":
        return port(value, where)
    if part == "hostname":
        return hostname(value, where)
    if part in _HASH_LENGTH:
        return file_hash(value, where, _HASH_LENGTH[part])
    if part == "size":
        return first_integer(value, where)
    if part in ("to", "cc"):
        return text_list(value, where) or None
    return first_text(value, where)


def _string(name: str) -> str:
    """``name`` when it holds a string (an object under that name is someone else's shape)."""
    return f"([{name}][?type(@) == 'string'] | [0])"


# The mapping used when a source gives none: the names common JSON alerts use.
DEFAULT_FIELDS: dict[str, str] = {
    "title": "title || name || rule.name || alert.signature || message || msg || summary",
    "time": '"@timestamp" || timestamp || time || ts || event.created || date',
    "severity": "severity || level || priority",
    "rule_name": "rule.name || rule_name || alert.signature",
    "rule_uid": "rule.id || rule_id || alert.signature_id",
    "description": "description",
    "src.ip": "src_ip || source.ip || src.ip",
    "dst.ip": "dst_ip || dest_ip || destination.ip || dst.ip",
    "host.hostname": f"hostname || host.name || host.hostname || {_string('host')}",
    "user": f"user.name || username || user_name || {_string('user')}",
}
DEFAULT_DEFAULTS: dict[str, Any] = {"severity": "unknown"}  # a level it cannot read


class GenericJsonParser(Parser):
    """Maps any JSON record to an alert through a per-source JMESPath field mapping."""

    format = "json"
    record_kind = RecordKind.JSON

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        unknown = sorted(set(self.options) - _OPTIONS)
        if unknown:
            raise ParseError(
                f"unknown option {unknown[0]!r}; options are: {', '.join(sorted(_OPTIONS))}",
                field=unknown[0],
            )
        fields = self.options.get("fields")
        defaults = self.options.get("defaults", {})
        if not isinstance(defaults, Mapping):
            raise ParseError("option 'defaults' must be an object", field="defaults")
        if fields is None:
            fields = DEFAULT_FIELDS
            defaults = {**DEFAULT_DEFAULTS, **defaults}
        if not isinstance(fields, Mapping) or not fields:
            raise ParseError(
                "option 'fields' must map alert fields to JMESPath expressions", field="fields"
            )
        self._defaults: dict[str, Any] = {}
        for target, value in defaults.items():
            _check_target(target, "defaults")
            self._defaults[target] = _default(target, value)
        self._getters: list[tuple[str, Getter]] = []
        self._expressions = {str(target): str(expression) for target, expression in fields.items()}
        for target, expression in fields.items():
            _check_target(target, "fields")
            self._getters.append((target, compile_expression(expression, f"fields.{target}")))
        mapped = set(fields)
        if "title" not in mapped and "title" not in self._defaults:
            raise ParseError("option 'fields' must map 'title'", field="fields.title")
        if "time" not in mapped and "time" not in self._defaults:
            raise ParseError(
                "option 'fields' must map 'time' (or set defaults.time)", field="fields.time"
            )
        severity_map = self.options.get("severity_map", {})
        if not isinstance(severity_map, Mapping):
            raise ParseError("option 'severity_map' must be an object", field="severity_map")
        self._severity_map = {
            str(key).strip().lower(): severity_option(value, f"severity_map.{key}")
            for key, value in severity_map.items()
        }
        match = self.options.get("match")
        self._match = None if match is None else compile_expression(match, "match")
        # Targets without an expression still get their default.
        self._fixed = [(t, v) for t, v in self._defaults.items() if t not in mapped]

    def parse(self, record: Any) -> ParseResult:
        """The alert this source's mapping finds in ``record``."""
        if not isinstance(record, dict | list):  # a mapping reads objects (or arrays)
            raise ParseError(f"json record must be a JSON object, not {json_type(record)}")
        if self._match is not None and _falsy(self._search("match", self._match, record)):
            return NotAnAlert("record does not satisfy the source's 'match' expression")
        values: dict[str, Any] = {}
        for target, getter in self._getters:
            raw = self._search(target, getter, record)
            if _nothing(raw):
                continue
            if target == "time":
                values[target] = _parse_time(raw[0] if isinstance(raw, list) else raw, target)
            elif target == "severity":
                values[target] = self._severity(raw)
            elif target.startswith("extra."):
                values[target] = raw
            else:
                converted = _convert(target, raw, target)
                if converted is not None:
                    values[target] = converted
        for target, value in self._defaults.items():
            if target not in values:
                values[target] = datetime.now(UTC) if value == "now" and target == "time" else value
        return _alert(values, self._expressions)

    def _search(self, target: str, getter: Getter, record: Any) -> Any:
        try:
            return getter(record)
        except _RUNTIME_ERRORS as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ParseError(
                f"the mapping for {target!r} failed on this record: {detail[:120]}", field=target
            ) from None

    def _severity(self, value: Any) -> Severity:
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and not isinstance(value, bool) and value in _SEVERITY_IDS:
            return Severity(value)
        label = first_text(value, "severity") if not isinstance(value, dict) else None
        if label is not None:
            key = label.lower()
            found = self._severity_map.get(key) or SEVERITY_LABELS.get(key)
            if found is not None:
                return found
            if key.isdigit() and len(key) <= 2 and int(key) in _SEVERITY_IDS:
                return Severity(int(key))
        default = self._defaults.get("severity")
        if isinstance(default, Severity):
            return default
        raise ParseError(
            f"field 'severity' value {value!r:.40} is not in the source's severity_map",
            field="severity",
        )


def _check_target(target: Any, section: str) -> None:
    if not isinstance(target, str) or (
        target not in TARGETS and not (target.startswith("extra.") and len(target) > 6)
    ):
        raise ParseError(
            f"unknown target field {target!r} in option {section!r}; targets are "
            f"{', '.join(sorted(TARGETS))} and extra.<name>",
            field=f"{section}.{target}",
        )


def _alert(values: dict[str, Any], expressions: Mapping[str, str]) -> Alert:
    for required in ("title", "time"):
        if values.get(required) is None:
            # Name the expression too: that is what the user wrote and must fix.
            raise ParseError(
                f"field {required!r} (mapped from {expressions.get(required, '?')!r}) "
                "yielded nothing for this record",
                field=required,
            )
    title = values["title"]
    when = values["time"]
    alert = Alert(
        title=title,
        time=when,
        severity=values.get("severity", Severity.UNKNOWN),
        uid=values.get("uid"),
        rule_uid=values.get("rule_uid"),
        rule_name=values.get("rule_name"),
        category=values.get("category"),
        description=values.get("description"),
        product=values.get("product"),
        vendor=values.get("vendor"),
        user=values.get("user"),
        url=values.get("url"),
        techniques=list(values.get("techniques", ())),
    )
    alert.src = _endpoint(values, "src")
    alert.dst = _endpoint(values, "dst")
    alert.host = _endpoint(values, "host")
    if any(target in values for target in _FILE_TARGETS):
        alert.file = FileInfo(
            name=values.get("file.name"),
            path=values.get("file.path"),
            size=values.get("file.size"),
            md5=values.get("file.md5"),
            sha1=values.get("file.sha1"),
            sha256=values.get("file.sha256"),
            mime_type=values.get("file.mime_type"),
        )
    if any(target in values for target in _EMAIL_TARGETS):
        alert.email = EmailInfo(
            sender=values.get("email.sender"),
            reply_to=values.get("email.reply_to"),
            to=list(values.get("email.to", ())),
            cc=list(values.get("email.cc", ())),
            subject=values.get("email.subject"),
            message_id=values.get("email.message_id"),
        )
    alert.extra = {
        target[6:]: value for target, value in values.items() if target.startswith("extra.")
    }
    return alert


def _endpoint(values: dict[str, Any], side: str) -> Endpoint | None:
    address = values.get(f"{side}.ip")
    number = values.get(f"{side}.port")
    name = values.get(f"{side}.hostname")
    if address is None and number is None and name is None:
        return None
    return Endpoint(ip=address, port=number, hostname=name)
