"""STIX 2.1 in: the indicators of a bundle (or of a TAXII page of objects) as records.

:func:`parse_bundle` reads a bundle's bytes (or one STIX object on its own, or a JSON list of
objects, as some tools write them); :func:`parse_objects` reads a list of objects (what a TAXII
collection returns page by page). Both return :class:`~quell.intel.model.Parsed`.

**What is refused.** A malformed input raises :class:`~quell.intel.model.IntelError` naming what
and where, and nothing of it is imported: not JSON, not a bundle, an object without ``type`` or
``id``, an indicator without ``pattern`` or ``pattern_type``, a timestamp or a confidence that is
not one, and a STIX pattern that does not parse. A broken pattern refuses the whole input: the
producer sent something wrong, and importing the rest would hide that.

**What is read.** Only ``indicator`` objects count. A STIX pattern is parsed with the OASIS
grammar (``stix2-patterns``) into a small tree (:func:`parse_pattern`), and each comparison the
store can match becomes one :class:`~quell.intel.model.IndicatorRecord`:

* ``=`` on ``ipv4-addr:value``, ``ipv6-addr:value``, ``domain-name:value``, ``url:value``,
  ``email-addr:value`` and ``file:hashes.'MD5'|'SHA-1'|'SHA-256'`` (also ``SHA1``/``SHA256``,
  any case); ``IN (...)`` there, which is an OR of equalities;
* ``ISSUBSET`` on ``ipv4-addr:value`` and ``ipv6-addr:value``: the network, a range;
* ``OR`` of those, inside one observation (``[a OR b]``) and between observations
  (``[a] OR [b]``): one record per comparison;
* ``[file:hashes.'SHA-256' = 'x' AND file:name = 'y']``: an AND whose comparisons are all on the
  ``file`` object and include hash equalities gives those hashes and nothing else; the hash alone
  identifies the file, the other conditions only narrow a match that is already exact.

Everything else is listed in ``Parsed.unsupported`` with the indicator id and a reason that names
it, never dropped silently: another ``pattern_type`` (``pattern_type 'yara'``), another object or
property (``email-message:subject``), another comparator or a negation (``comparator MATCHES``),
an AND of comparisons (``AND of 2 comparisons``), an AND or FOLLOWEDBY of observations, and a
qualifier (``qualifier WITHIN 300 SECONDS``): none of these is a single value to match. In an OR
the supported branches are imported and the others listed. Each indicator gives at most one
``Unsupported`` item. Observable objects (``ipv4-addr``, ``domain-name``, ...) and every other
object are context, not indicators: they are neither imported nor counted.

**The fields of a record.** ``confidence`` (0-100); ``severity_id`` None (STIX core has none);
``tlp`` the highest of the ``object_marking_refs`` that are TLP markings (the TLP 1.0 definitions
STIX 2.1 predefines, the TLP 2.0 ones of the OASIS extension, and ``marking-definition`` objects
in the same input of either kind), else ``default_tlp``; ``first_seen`` from ``valid_from``
(``created`` when it is missing); ``last_seen`` the latest ``sighting`` of the indicator in the
same input, else None (``modified`` is when the producer last edited the object, not when the
indicator was seen, and would make every re-issue of an unchanged indicator look updated);
``valid_until``; ``revoked``; ``labels`` as tags; ``kill_chain_phases`` as ``chain:phase``;
``stix_ids`` the indicator's id and the ids it ``indicates`` through relationships in the same
input; ``description`` (``name`` when there is none); ``origin`` the indicator id. An indicator
given twice (two versions) is read once, the latest ``modified``. ``x_quell_match: subdomain``
(what :mod:`quell.intel.stix_export` writes) makes a domain match its subdomains.

``sighting`` objects of an indicator in the input become ``Parsed.sightings``: one per key of the
indicator, at the sighting's ``last_seen`` (else ``first_seen``, else ``created``), where seen
being its ``where_sighted_refs`` joined by commas. References resolve within the objects given:
a TAXII page's relationships and sightings of indicators on other pages are not linked.

**Speed.** The ANTLR parser takes about 150 µs a pattern; an import has to do tens of thousands
a second. Patterns repeat their shape with other values, so each string literal is replaced by a
numbered placeholder, each distinct shape is parsed once (a bounded cache) and the literals are
put back into its tree. The lexer reads every string literal as the same token whatever it
holds, so this is the parser's own answer; anything the placeholder scan is not certain about
(a stray quote, an unknown escape) is parsed directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from antlr4.tree.Tree import TerminalNode  # type: ignore[import-untyped]
from stix2patterns.exceptions import ParseException  # type: ignore[import-untyped]
from stix2patterns.v21.grammars.STIXPatternParser import (  # type: ignore[import-untyped]
    STIXPatternParser as _P,
)
from stix2patterns.v21.pattern import Pattern  # type: ignore[import-untyped]

from quell.intel.model import (
    MAX_TAGS,
    IndicatorRecord,
    IndicatorType,
    IntelError,
    MatchKind,
    Parsed,
    Tlp,
    Unsupported,
    indicator_key,
)

__all__ = [
    "TLP1_MARKINGS",
    "TLP2_EXTENSION",
    "TLP2_MARKINGS",
    "Comparison",
    "Junction",
    "Observation",
    "ObservationOp",
    "Other",
    "Qualified",
    "parse_bundle",
    "parse_objects",
    "parse_pattern",
    "parse_pattern_uncached",
    "pattern_indicators",
]

# The TLP 1.0 marking definitions STIX 2.1 predefines (white is TLP 2.0's clear).
TLP1_MARKINGS = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": Tlp.CLEAR,
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": Tlp.GREEN,
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": Tlp.AMBER,
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": Tlp.RED,
}
# The TLP 2.0 marking definitions of the OASIS extension (cti-stix-common-objects).
TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_MARKINGS = {
    "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487": Tlp.CLEAR,
    "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb": Tlp.GREEN,
    "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421": Tlp.AMBER,
    "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003": Tlp.AMBER_STRICT,
    "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1": Tlp.RED,
}
_KNOWN_MARKINGS = {**TLP1_MARKINGS, **TLP2_MARKINGS}

_PATTERN_CACHE = 4096
_TEXT_CHARS = 200  # of a pattern, kept with an unsupported item


# -- the pattern tree ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Other:
    """A literal that is not a string: ``kind`` int, float, bool, binary, hex or timestamp."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class _Ref:
    """A placeholder of a shape: the ``index``-th string literal of the pattern."""

    index: int


PathStep = str | int | None  # a key, an index, or None for [*]
Value = str | Other | tuple["Value", ...] | _Ref | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """``object_type:path op value``; ``op`` is ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``,
    ``IN``, ``LIKE``, ``MATCHES``, ``ISSUBSET``, ``ISSUPERSET`` or ``EXISTS``."""

    object_type: str
    path: tuple[PathStep | _Ref, ...]
    op: str
    value: Value
    negated: bool = False

    @property
    def target(self) -> str:
        """``file:hashes.'SHA-256'``, ``email-message:body_multipart[*].body_raw_ref.name``."""
        text = self.object_type + ":"
        for number, step in enumerate(self.path):
            if step is None:
                text += "[*]"
            elif isinstance(step, int):
                text += f"[{step}]"
            else:
                name = step if isinstance(step, str) else f"<{step.index}>"
                plain = _IDENTIFIER.fullmatch(name) is not None
                shown = name if plain else "'" + _escape(name) + "'"
                text += shown if number == 0 else "." + shown
        return text


@dataclass(frozen=True, slots=True)
class Junction:
    """``AND`` or ``OR`` of comparisons inside one observation."""

    op: str
    items: tuple[Comparison | Junction, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    """``[ ... ]``."""

    expression: Comparison | Junction


@dataclass(frozen=True, slots=True)
class ObservationOp:
    """``AND``, ``OR`` or ``FOLLOWEDBY`` of observations."""

    op: str
    items: tuple[PatternNode, ...]


@dataclass(frozen=True, slots=True)
class Qualified:
    """An observation expression with a qualifier (``WITHIN 5 SECONDS`` and the like)."""

    qualifier: str
    expression: PatternNode


PatternNode = Observation | ObservationOp | Qualified

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


MAX_PATTERN_CHARS = 256 * 1024  # a longer pattern is listed as unsupported, not parsed


class PatternSyntaxError(Exception):
    """The pattern does not parse; the message is the parser's."""


def parse_pattern(pattern: str) -> PatternNode:
    """The tree of a STIX pattern, through the shape cache; :class:`PatternSyntaxError` when it
    does not parse."""
    literals: list[str] = []
    shape = _shape_of(pattern, literals)
    entry = None if shape is None else _shape_entry(shape)
    if entry is None:
        return parse_pattern_uncached(pattern)
    tree: PatternNode = _fill(entry.tree, literals) if literals else entry.tree
    return tree


def pattern_indicators(pattern: str) -> tuple[list[Found], tuple[str, ...]]:
    """:func:`indicated` of :func:`parse_pattern`, with the answer of the shape cached too when
    it does not depend on the literals (when no property name is one)."""
    literals: list[str] = []
    shape = _shape_of(pattern, literals)
    entry = None if shape is None else _shape_entry(shape)
    if entry is None:
        return indicated(parse_pattern_uncached(pattern))
    if entry.found is None:
        return indicated(_fill(entry.tree, literals))
    found: list[Found] = [
        (kind, literals[value.index] if isinstance(value, _Ref) else value, match)
        for kind, value, match in entry.found
    ]
    return found, entry.reasons


def _shape_of(pattern: str, literals: list[str]) -> str | None:
    """``pattern`` with its plain string literals, put in ``literals``, replaced by numbered
    placeholders; None when the scan is not sure to read them as the lexer does."""
    if "\x00" in pattern:
        return None
    try:
        return _LITERAL.sub(_Collect(literals), pattern)
    except _Unsure:
        return None


def parse_pattern_uncached(pattern: str) -> PatternNode:
    """The tree of a STIX pattern, parsed directly (the reference :func:`parse_pattern` meets)."""
    try:
        compiled = Pattern(pattern)
    except ParseException as exc:
        raise PatternSyntaxError(str(exc)) from None
    return _Walker(shape=False).walk(compiled)


# A prefixed literal (b'..', h'..', t'..') where the letter starts a token is kept as it is; a
# plain literal is replaced. A letter or underscore before the prefix makes it part of an
# identifier; a digit leaves it unclear, so such a literal is kept as it is (it then reads as
# its own text, which is always right). So is a property name (``hashes.'SHA-256'``): there are
# few, and a shape whose properties are all names caches what it indicates as well.
_LITERAL = re.compile(
    r"(?<![A-Za-z_])[bht]'[^']*'|(\.\s*)'((?:[^'\\]|\\.)*)'|'((?:[^'\\]|\\.)*)'", re.DOTALL
)
_VALID_ESCAPES = re.compile(r"(?:[^\\]|\\['\\])*", re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


class _Unsure(Exception):
    pass


class _Collect:
    """The ``re.sub`` callback that swaps plain string literals for numbered placeholders."""

    __slots__ = ("literals",)

    def __init__(self, literals: list[str]) -> None:
        self.literals = literals

    def __call__(self, match: re.Match[str]) -> str:
        body = match.group(3)
        if body is None:  # a prefixed literal, or a property name: kept
            name = match.group(2)
            if name is not None and "\\" in name and _VALID_ESCAPES.fullmatch(name) is None:
                raise _Unsure
            return match.group(0)
        if "\\" in body:
            if _VALID_ESCAPES.fullmatch(body) is None:
                raise _Unsure
            body = _UNESCAPE.sub(r"\1", body)
        self.literals.append(body)
        return f"'\x00{len(self.literals) - 1}'"


@dataclass(frozen=True, slots=True)
class _ShapeEntry:
    tree: PatternNode
    found: list[tuple[IndicatorType, str | _Ref, MatchKind]] | None  # None: depends on literals
    reasons: tuple[str, ...]


@lru_cache(maxsize=_PATTERN_CACHE)
def _shape_entry(shape: str) -> _ShapeEntry | None:
    """The tree of a shape, with placeholders, and what it indicates when that does not depend
    on the literals. None when it does not parse, or when its placeholders are not each exactly
    one string literal of the tree (then the scan and the lexer disagreed, and the original is
    parsed directly)."""
    try:
        compiled = Pattern(shape)
    except ParseException:
        return None
    walker = _Walker(shape=True)
    tree = walker.walk(compiled)
    if sorted(walker.refs) != list(range(shape.count("'\x00"))):
        return None
    if walker.path_refs:
        return _ShapeEntry(tree, None, ())
    found, reasons = indicated(tree)
    return _ShapeEntry(tree, found, reasons)  # type: ignore[arg-type]


def _fill(node: Any, literals: list[str]) -> Any:
    """``node`` with its placeholders replaced by ``literals``."""
    kind = type(node)
    if kind is Observation:
        return Observation(_fill(node.expression, literals))
    if kind is Comparison:
        path = node.path
        if any(type(step) is _Ref for step in path):
            path = tuple(literals[s.index] if type(s) is _Ref else s for s in path)
        value = _fill_value(node.value, literals)
        return Comparison(node.object_type, path, node.op, value, node.negated)
    if kind is Junction or kind is ObservationOp:
        return kind(node.op, tuple(_fill(item, literals) for item in node.items))
    return Qualified(node.qualifier, _fill(node.expression, literals))


def _fill_value(value: Value, literals: list[str]) -> Value:
    if type(value) is _Ref:
        return literals[value.index]
    if type(value) is tuple:
        return tuple(_fill_value(v, literals) for v in value)
    return value


_EQ_TOKENS = {_P.EQ: "=", _P.NEQ: "!="}
_OTHER_LITERALS = {
    _P.IntPosLiteral: "int",
    _P.IntNegLiteral: "int",
    _P.FloatPosLiteral: "float",
    _P.FloatNegLiteral: "float",
    _P.BoolLiteral: "bool",
    _P.BinaryLiteral: "binary",
    _P.HexLiteral: "hex",
    _P.TimestampLiteral: "timestamp",
}


class _Walker:
    """The ANTLR parse tree to a :data:`PatternNode` (AND and OR kept apart, same-operator
    chains flattened)."""

    def __init__(self, *, shape: bool) -> None:
        self.shape = shape
        self.refs: list[int] = []
        self.path_refs = False  # a property name is a placeholder

    def walk(self, compiled: Any) -> PatternNode:
        tree: PatternNode = compiled.visit(self)
        return tree

    def visit(self, tree: Any) -> PatternNode:  # called by Pattern.visit with the parse tree
        return self.observations(tree.getChild(0))

    def observations(self, ctx: Any) -> PatternNode:
        kind = type(ctx)
        kids = ctx.children
        if kind in (
            _P.ObservationExpressionsContext,
            _P.ObservationExpressionOrContext,
            _P.ObservationExpressionAndContext,
        ):
            if len(kids) == 1:
                return self.observations(kids[0])
            op = kids[1].getText().upper()
            items: list[PatternNode] = []
            for side in (self.observations(kids[0]), self.observations(kids[2])):
                if type(side) is ObservationOp and side.op == op:
                    items.extend(side.items)
                else:
                    items.append(side)
            return ObservationOp(op, tuple(items))
        if kind is _P.ObservationExpressionSimpleContext:
            return Observation(self.comparison(kids[1]))
        if kind is _P.ObservationExpressionCompoundContext:
            return self.observations(kids[1])
        # ...WithinContext, ...RepeatedContext, ...StartStopContext: expression, qualifier
        qualifier = " ".join(kid.getText() for kid in kids[1].children)
        return Qualified(qualifier, self.observations(kids[0]))

    def comparison(self, ctx: Any) -> Comparison | Junction:
        kind = type(ctx)
        kids = ctx.children
        if kind is _P.ComparisonExpressionContext or kind is _P.ComparisonExpressionAndContext:
            if len(kids) == 1:
                return self.comparison(kids[0])
            op = kids[1].getText().upper()
            items: list[Comparison | Junction] = []
            for side in (self.comparison(kids[0]), self.comparison(kids[2])):
                if type(side) is Junction and side.op == op:
                    items.extend(side.items)
                else:
                    items.append(side)
            return Junction(op, tuple(items))
        if kind is _P.PropTestParenContext:
            return self.comparison(kids[1])
        return self.prop_test(kids)

    def prop_test(self, kids: list[Any]) -> Comparison:
        object_type = ""
        path: tuple[PathStep | _Ref, ...] = ()
        op = ""
        negated = False
        value: Value = None
        for kid in kids:
            if isinstance(kid, TerminalNode):
                token = kid.symbol.type
                if token == _P.NOT:
                    negated = True
                elif token == _P.StringLiteral:
                    value = self.string(kid.getText())
                elif token in _EQ_TOKENS:
                    op = _EQ_TOKENS[token]
                else:
                    op = kid.getText().upper()
            elif type(kid) is _P.ObjectPathContext:
                object_type, path = self.object_path(kid)
            elif type(kid) is _P.SetLiteralContext:
                value = tuple(
                    self.literal(item)
                    for item in kid.children
                    if type(item) is _P.PrimitiveLiteralContext
                )
            else:  # PrimitiveLiteralContext, OrderableLiteralContext
                value = self.literal(kid)
        return Comparison(object_type, path, op, value, negated)

    def literal(self, ctx: Any) -> Value:
        while not isinstance(ctx, TerminalNode):
            ctx = ctx.getChild(0)
        token = ctx.symbol.type
        if token == _P.StringLiteral:
            return self.string(ctx.getText())
        text = ctx.getText()
        kind = _OTHER_LITERALS[token]
        return Other(kind, text.lower() if kind == "bool" else text)

    def string(self, text: str) -> str | _Ref:
        if self.shape and text.startswith("'\x00"):
            index = int(text[2:-1])
            self.refs.append(index)
            return _Ref(index)
        body = text[1:-1]
        return _UNESCAPE.sub(r"\1", body) if "\\" in body else body

    def object_path(self, ctx: Any) -> tuple[str, tuple[PathStep | _Ref, ...]]:
        kids = ctx.children
        object_type = kids[0].getText()
        steps: list[PathStep | _Ref] = [self.key(kids[2].getChild(0))]
        if len(kids) > 3:
            self.path_steps(kids[3], steps)
        return object_type, tuple(steps)

    def key(self, token: Any) -> str | _Ref:
        if token.symbol.type == _P.StringLiteral:
            name = self.string(token.getText())
            if type(name) is _Ref:
                self.path_refs = True
            return name
        text: str = token.getText()
        return text

    def path_steps(self, ctx: Any, steps: list[PathStep | _Ref]) -> None:
        kind = type(ctx)
        kids = ctx.children
        if kind is _P.PathStepContext:
            for kid in kids:
                self.path_steps(kid, steps)
        elif kind is _P.KeyPathStepContext:
            steps.append(self.key(kids[1]))
        else:  # IndexPathStepContext: [ n ] or [ * ]
            text = kids[1].getText()
            steps.append(None if text == "*" else int(text))


# -- what a pattern indicates ----------------------------------------------------------------------

_VALUE_TYPES = {
    "ipv4-addr": IndicatorType.IPV4,
    "ipv6-addr": IndicatorType.IPV6,
    "domain-name": IndicatorType.DOMAIN,
    "url": IndicatorType.URL,
    "email-addr": IndicatorType.EMAIL,
}
_HASH_NAMES = {
    "MD5": IndicatorType.MD5,
    "SHA1": IndicatorType.SHA1,
    "SHA256": IndicatorType.SHA256,
}
_IP_TYPES = (IndicatorType.IPV4, IndicatorType.IPV6)
HASH_KINDS = frozenset(_HASH_NAMES.values())

Found = tuple[IndicatorType, str, MatchKind]


def _kind_of(comparison: Comparison) -> IndicatorType | None:
    """The indicator type a comparison's object and property carry, if any."""
    path = comparison.path
    if len(path) == 1 and path[0] == "value":
        return _VALUE_TYPES.get(comparison.object_type)
    if (
        comparison.object_type == "file"
        and len(path) == 2
        and path[0] == "hashes"
        and isinstance(path[1], str)
    ):
        return _HASH_NAMES.get(path[1].upper().replace("-", "").replace("_", ""))
    return None


def indicated(tree: PatternNode) -> tuple[list[Found], tuple[str, ...]]:
    """The (type, value, match) each supported comparison gives, and why the rest cannot be
    matched (see the module's description), each reason once."""
    found: list[Found] = []
    reasons: list[str] = []
    _observations(tree, found, reasons)
    return found, tuple(dict.fromkeys(reasons))


def _observations(node: PatternNode, found: list[Found], reasons: list[str]) -> None:
    if type(node) is Observation:
        _comparisons(node.expression, found, reasons)
    elif type(node) is ObservationOp:
        if node.op == "OR":
            for item in node.items:
                _observations(item, found, reasons)
        else:
            reasons.append(f"{node.op} of {len(node.items)} observations")
    elif type(node) is Qualified:
        reasons.append(f"qualifier {node.qualifier}")


def _comparisons(node: Comparison | Junction, found: list[Found], reasons: list[str]) -> None:
    if isinstance(node, Comparison):
        _comparison(node, found, reasons)
        return
    if node.op == "OR":
        for item in node.items:
            _comparisons(item, found, reasons)
        return
    hashes = [
        item
        for item in node.items
        if type(item) is Comparison
        and item.op == "="
        and not item.negated
        and isinstance(item.value, str | _Ref)
        and _kind_of(item) in HASH_KINDS
    ]
    if hashes and _object_types(node) == {"file"}:
        for item in hashes:
            _comparison(item, found, reasons)
        return
    targets = sorted({c.target for c in _leaves(node)})
    reasons.append(f"AND of {len(node.items)} comparisons ({', '.join(targets)})")


def _leaves(node: Comparison | Junction) -> Iterable[Comparison]:
    if isinstance(node, Comparison):
        yield node
    else:
        for item in node.items:
            yield from _leaves(item)


def _object_types(node: Comparison | Junction) -> set[str]:
    return {c.object_type for c in _leaves(node)}


def _comparison(node: Comparison, found: list[Found], reasons: list[str]) -> None:
    kind = _kind_of(node)
    op = node.op
    if node.negated:
        reasons.append(f"NOT {op} on {node.target}")
        return
    if op == "=" or op == "IN":
        if kind is None:
            reasons.append(f"{node.target} is not a kind of indicator Quell matches")
            return
        values = node.value if type(node.value) is tuple else (node.value,)
        for value in values:
            if isinstance(value, str | _Ref):  # a placeholder is a string literal
                found.append((kind, value, MatchKind.EXACT))  # type: ignore[arg-type]
            else:
                reasons.append(f"a value that is not a string for {node.target}")
        return
    if op == "ISSUBSET" and kind in _IP_TYPES and isinstance(node.value, str | _Ref):
        found.append((kind, node.value, MatchKind.CIDR))  # type: ignore[arg-type]
        return
    reasons.append(f"comparator {op} on {node.target}")


# -- objects ---------------------------------------------------------------------------------------


def parse_bundle(
    data: bytes | str, *, default_tlp: Tlp = Tlp.CLEAR, origin: str = "bundle"
) -> Parsed:
    """The indicators of a STIX 2.1 bundle; :class:`IntelError` when it is malformed."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise IntelError(
            f"{origin} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(character {exc.pos})",
            origin=origin,
        ) from None
    if isinstance(document, list):  # a list of objects, as some tools write them
        return parse_objects(document, default_tlp=default_tlp, origin=origin)
    if not isinstance(document, dict):
        raise IntelError(
            f"{origin} is not a STIX bundle: the JSON is {_json_kind(document)}, not an object",
            origin=origin,
        )
    kind = document.get("type")
    if kind != "bundle":
        if is_stix_object(document):  # one object on its own: a bundle of one
            return parse_objects([document], default_tlp=default_tlp, origin=origin)
        shown = "no type" if kind is None else f"type {kind!r}"
        raise IntelError(
            f"{origin} is not a STIX bundle: it has {shown}, not 'bundle', and no STIX id",
            origin=origin,
        )
    objects = document.get("objects", [])
    if not isinstance(objects, list):
        raise IntelError(
            f"{origin}: the bundle's objects are {_json_kind(objects)}, not a list", origin=origin
        )
    return parse_objects(objects, default_tlp=default_tlp, origin=origin)


def is_stix_object(document: dict[str, Any]) -> bool:
    """A lone STIX object: a ``type`` and an ``id`` of the form ``type--uuid``."""
    kind, ident = document.get("type"), document.get("id")
    return isinstance(kind, str) and isinstance(ident, str) and ident.startswith(f"{kind}--")


def parse_objects(
    objects: list[dict[str, Any]], *, default_tlp: Tlp = Tlp.CLEAR, origin: str = "bundle"
) -> Parsed:
    """The indicators of a list of STIX 2.1 objects (a bundle's, or a TAXII page)."""
    if not isinstance(objects, list):
        raise IntelError(f"{origin}: the objects are {_json_kind(objects)}, not a list")
    indicators: dict[str, tuple[int, dict[str, Any]]] = {}
    markings: dict[str, Tlp] = {}
    indicates: dict[str, list[str]] = {}
    sightings: list[tuple[int, dict[str, Any]]] = []
    for index, obj in enumerate(objects):
        if type(obj) is not dict:
            raise IntelError(
                f"{origin}: objects[{index}] is {_json_kind(obj)}, not a STIX object",
                origin=origin,
            )
        kind = obj.get("type")
        object_id = obj.get("id")
        if not isinstance(kind, str) or not kind:
            raise IntelError(f"{origin}: objects[{index}] has no type", origin=origin)
        if not isinstance(object_id, str) or not object_id:
            raise IntelError(f"{origin}: objects[{index}] ({kind}) has no id", origin=origin)
        if kind == "indicator":
            known = indicators.get(object_id)
            if known is None or _newer(obj, known[1], f"{origin}: objects[{index}]"):
                indicators[object_id] = (index, obj)
        elif kind == "relationship":
            if obj.get("relationship_type") == "indicates":
                source, target = obj.get("source_ref"), obj.get("target_ref")
                if isinstance(source, str) and isinstance(target, str):
                    indicates.setdefault(source, []).append(target)
        elif kind == "marking-definition":
            level = marking_tlp(obj)
            if level is not None:
                markings[object_id] = level
        elif kind == "sighting":
            sightings.append((index, obj))

    seen: dict[str, list[tuple[datetime, str | None]]] = {}
    for index, obj in sightings:
        where = f"{origin}: objects[{index}] ({obj['id']})"
        of = obj.get("sighting_of_ref")
        if not isinstance(of, str) or of not in indicators:
            continue
        at = (
            _time(obj, "last_seen", where)
            or _time(obj, "first_seen", where)
            or _time(obj, "created", where)
        )
        if at is None:
            continue
        refs = obj.get("where_sighted_refs")
        places = ",".join(r for r in refs if isinstance(r, str)) if isinstance(refs, list) else ""
        seen.setdefault(of, []).append((at, places or None))

    parsed = Parsed()
    reader = _Reader(parsed, markings, indicates, default_tlp, origin)
    for object_id, (index, obj) in indicators.items():
        reader.indicator(index, object_id, obj, seen.get(object_id))
    return parsed


class _Reader:
    __slots__ = ("default_tlp", "indicates", "markings", "origin", "parsed")

    def __init__(
        self,
        parsed: Parsed,
        markings: dict[str, Tlp],
        indicates: dict[str, list[str]],
        default_tlp: Tlp,
        origin: str,
    ) -> None:
        self.parsed = parsed
        self.markings = markings
        self.indicates = indicates
        self.default_tlp = default_tlp
        self.origin = origin

    def indicator(
        self,
        index: int,
        object_id: str,
        obj: dict[str, Any],
        seen: list[tuple[datetime, str | None]] | None,
    ) -> None:
        where = f"{self.origin}: objects[{index}] ({object_id})"
        pattern = obj.get("pattern")
        pattern_type = obj.get("pattern_type")
        if not isinstance(pattern, str) or not pattern.strip():
            raise IntelError(f"{where}: an indicator without a pattern", indicator=object_id)
        if not isinstance(pattern_type, str) or not pattern_type.strip():
            raise IntelError(f"{where}: an indicator without a pattern_type", indicator=object_id)
        first_seen = _time(obj, "valid_from", where) or _time(obj, "created", where)
        valid_until = _time(obj, "valid_until", where)
        confidence = obj.get("confidence")
        if confidence is not None and (type(confidence) is not int or not 0 <= confidence <= 100):
            raise IntelError(
                f"{where}: confidence {confidence!r} is not an integer from 0 to 100",
                indicator=object_id,
            )
        if pattern_type.strip().lower() != "stix":
            self.parsed.unsupported.append(
                Unsupported(
                    object_id,
                    f"pattern_type {pattern_type!r}: only STIX patterns are read",
                    pattern[:_TEXT_CHARS],
                )
            )
            return
        if len(pattern) > MAX_PATTERN_CHARS:
            self.parsed.unsupported.append(
                Unsupported(object_id, f"a pattern longer than {MAX_PATTERN_CHARS:,} characters",
                            pattern[:_TEXT_CHARS])
            )  # fmt: skip
            return
        try:
            found, reasons = pattern_indicators(pattern)
        except RecursionError:
            # Valid, but nested deeper than the tree walk goes (thousands of ORs in one
            # observation): listed, never a crash of the whole import.
            self.parsed.unsupported.append(
                Unsupported(object_id, "a pattern nested too deeply to read",
                            pattern[:_TEXT_CHARS])
            )  # fmt: skip
            return
        except PatternSyntaxError as exc:
            raise IntelError(
                f"{where}: the pattern does not parse ({exc}): {pattern[:_TEXT_CHARS]}",
                indicator=object_id,
            ) from None
        if reasons:
            reason = "; ".join(reasons)
            if found:
                reason += " (the rest of the pattern was imported)"
            self.parsed.unsupported.append(Unsupported(object_id, reason, pattern[:_TEXT_CHARS]))
        if not found:
            return

        tlp = self.default_tlp
        refs = obj.get("object_marking_refs")
        if refs:
            marked = [
                level
                for ref in refs
                if isinstance(ref, str)
                and (level := _KNOWN_MARKINGS.get(ref, self.markings.get(ref))) is not None
            ]
            if marked:
                tlp = max(marked)
        stix_ids: tuple[str, ...] = (object_id,)
        targets = self.indicates.get(object_id)
        if targets:
            stix_ids = (object_id, *sorted(set(targets) - {object_id}))
        description = obj.get("description") or obj.get("name") or None
        subdomains = obj.get("x_quell_match") == "subdomain"
        last_seen = max(at for at, _ in seen) if seen else None
        tags = _tags(obj.get("labels"))
        kill_chain = _kill_chain(obj.get("kill_chain_phases"))
        revoked = obj.get("revoked") is True
        records = self.parsed.records
        for kind, value, match in found:
            if subdomains and kind is IndicatorType.DOMAIN:
                match = MatchKind.SUBDOMAIN
            records.append(
                IndicatorRecord(
                    kind,
                    value,
                    match,
                    confidence,
                    None,
                    tlp,
                    first_seen,
                    last_seen,
                    valid_until,
                    revoked,
                    tags,
                    kill_chain,
                    stix_ids,
                    description if isinstance(description, str) else None,
                    0,
                    object_id,
                )
            )
            if seen:
                try:
                    key = indicator_key(kind, value, match)[0]
                except IntelError:
                    continue  # the store lists the value as unsupported
                for at, places in seen:
                    self.parsed.sightings.append((key, at, places))


def marking_tlp(obj: dict[str, Any]) -> Tlp | None:
    """The TLP level a ``marking-definition`` object defines, if it is a TLP marking: TLP 1.0
    (``definition_type: tlp``) or TLP 2.0 (the extension's ``tlp_2_0``)."""
    known = _KNOWN_MARKINGS.get(obj.get("id", ""))
    if known is not None:
        return known
    if obj.get("definition_type") == "tlp":
        definition = obj.get("definition")
        if isinstance(definition, dict):
            return _tlp_word(definition.get("tlp"))
    extensions = obj.get("extensions")
    if isinstance(extensions, dict):
        for extension in extensions.values():
            if isinstance(extension, dict) and "tlp_2_0" in extension:
                return _tlp_word(extension["tlp_2_0"])
    return None


def _tlp_word(word: Any) -> Tlp | None:
    if not isinstance(word, str):
        return None
    try:
        return Tlp.parse(word)
    except IntelError:
        return None


def _tags(labels: Any) -> tuple[str, ...]:
    if not isinstance(labels, list) or not labels:
        return ()
    return tuple(dict.fromkeys(t for t in labels if isinstance(t, str) and t))[:MAX_TAGS]


def _kill_chain(phases: Any) -> tuple[str, ...]:
    if not isinstance(phases, list) or not phases:
        return ()
    found: list[str] = []
    for phase in phases:
        if isinstance(phase, dict):
            chain, name = phase.get("kill_chain_name"), phase.get("phase_name")
            if isinstance(name, str) and name:
                found.append(f"{chain}:{name}" if isinstance(chain, str) and chain else name)
    return tuple(dict.fromkeys(found))


def _time(obj: dict[str, Any], field: str, where: str) -> datetime | None:
    text = obj.get(field)
    if text is None:
        return None
    if isinstance(text, str):
        try:
            return _timestamp(text)
        except (ValueError, OverflowError):  # OverflowError: out of range once in UTC
            pass
    raise IntelError(f"{where}: {field} {text!r} is not a timestamp", field=field)


@lru_cache(maxsize=8192)
def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _newer(obj: dict[str, Any], than: dict[str, Any], where: str) -> bool:
    mine = _time(obj, "modified", where)
    theirs = _time(than, "modified", where)
    return mine is not None and (theirs is None or mine >= theirs)


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
