"""CACAO 2.0 conditions and variable substitution, to and from Quell expressions and templates.

A CACAO ``if-condition``/``while-condition`` holds a condition in a loose "STIX patterning"
dialect, and commands, agents and targets hold text with ``__name__:value`` references::

    __soarca_ssh_result__:value != '01-01-2025'
    __count__:value > 5 AND __ok__:value = true
    NOT (__a__:value = 'x' OR __b__:value <= 3.5)
    __ip__:value IN 10.0.0.0/8
    touch __path__:value

Quell runs conditions as Jinja expressions in its sandbox and fills text in with templates, so
this module translates both ways:

- :func:`condition_to_expression` parses a condition (a bounded LALR grammar, below) and writes
  an expression that calls :func:`cacao_compare`, :func:`cacao_like` and :func:`cacao_matches`,
  so the type coercion CACAO needs lives in plain Python, not in Jinja. Every literal is written
  as an escaped Jinja string, so no text in a playbook can become code.
- :func:`expression_to_condition` reads such an expression (or a plain comparison of variables)
  back, for export; anything else gives None.
- :func:`text_to_template` and :func:`template_to_text` do the same for text.
- :func:`evaluate_condition` evaluates a condition directly, without Jinja: it is the reference
  semantics the generated expressions must agree with.

The grammar, keywords case-insensitive::

    condition   := or_expr
    or_expr     := and_expr (OR and_expr)*
    and_expr    := not_expr (AND not_expr)*
    not_expr    := NOT not_expr | '(' or_expr ')' | comparison | operand
    comparison  := operand [NOT] ( = | == | != | <> | < | <= | > | >= ) operand
                 | operand [NOT] IN ( '(' operand (',' operand)* ')' | operand )
                 | operand [NOT] ( LIKE | MATCHES | ISSUBSET | ISSUPERSET ) operand
    operand     := __name__:value | __name__ | 'string' | "string" | number
                 | true | false | null | bare-word

A bare word (``testing``, ``10.0.0.0/8``, ``2001:db8::1``, ``https://example.com``) is a string:
SOARCA, the reference executor, splits a condition on spaces and compares the words unquoted,
and its documentation and tests write them so. A bare operand standing alone as a condition must
be a variable (true when its value is true or ``'true'``) or ``true``/``false``. ``&&``, ``||``
and ``!`` are not accepted: SOARCA does not use them and STIX does not define them. Source is at
most :data:`MAX_SOURCE` characters and nests at most :data:`MAX_DEPTH` levels (parentheses, NOT
and each AND/OR link count), which keeps the generated expression well inside what Jinja and
Python compile.

Comparison semantics (:func:`cacao_compare`), chosen because CACAO variable values are JSON
strings while conditions write numbers and booleans bare:

- A missing value (None, or Jinja's undefined) equals only null; any ordering with it is false.
- A boolean compares with a boolean or with the text ``true``/``false`` (any case); with
  anything else it is unequal, and ordering booleans is false.
- A number compares with a number, or with text that reads as a decimal number, as numbers.
- Otherwise ``=``/``!=`` compare the texts (``true``/``false`` for booleans); ordering compares
  two texts as numbers when both read as numbers, else as text (so ISO dates order correctly).
- Ordering incompatible values is false, never an error.
- ``x IN (a, b)``: x equals one of them. ``x IN y``: y a list (or mapping: its keys) holds x; y
  a CIDR network and x an address in it; otherwise x equals y. SOARCA's string ``IN`` instead
  asks whether the *left* text contains the right one; that reading is deliberately not copied.
- ``ISSUBSET``/``ISSUPERSET``: network (or address) containment, false when either is not one.
- ``LIKE``: SQL LIKE over the whole text, ``%`` any run and ``_`` one character, case-sensitive,
  no escape character (as in STIX). ``MATCHES``: an RE2 search (linear time), case-sensitive.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import re2  # type: ignore[import-untyped]
from jinja2 import Environment, TemplateSyntaxError, Undefined, nodes
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from quell.errors import InvalidInput

MAX_SOURCE: Final = 8 * 1024  # characters in one condition (as for any Quell expression)
MAX_DEPTH: Final = 64  # nesting of parentheses, NOT, and AND/OR links
MAX_PATTERN: Final = 1024  # characters in a LIKE or MATCHES pattern

NAME_PATTERN: Final = r"__[A-Za-z_][A-Za-z0-9_-]{0,199}__"
_NAME = re.compile(NAME_PATTERN + r"\Z")
_REFERENCE = re.compile(f"({NAME_PATTERN}):value")


class ConditionError(InvalidInput):
    """A CACAO condition that does not parse or breaks a limit; the message names the column."""


# -- the syntax tree ----------------------------------------------------------------------------

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Var:
    """A reference to the CACAO variable ``name`` (``__name__``)."""

    name: str


@dataclass(frozen=True)
class Lit:
    """A literal value; as a condition by itself only ``true`` or ``false``."""

    value: Scalar


@dataclass(frozen=True)
class Items:
    """The parenthesized list on the right of ``IN``."""

    items: tuple[Var | Lit, ...]


Operand = Var | Lit | Items


@dataclass(frozen=True)
class Cmp:
    """``left op right``; ``op`` is a :data:`COMPARE_OPS` name, ``like`` or ``matches``."""

    op: str
    left: Operand
    right: Operand


@dataclass(frozen=True)
class Not:
    item: Cond


@dataclass(frozen=True)
class And:
    items: tuple[Cond, ...]  # at least two, none itself an And (kept flat: see _chain)


@dataclass(frozen=True)
class Or:
    items: tuple[Cond, ...]  # at least two, none itself an Or


Cond = Cmp | Not | And | Or | Lit

COMPARE_OPS: Final = ("==", "!=", "<", "<=", ">", ">=", "in", "issubset", "issuperset")
_TEXT_OPS: Final = {"like": "cacao_like", "matches": "cacao_matches"}
_CACAO_OPS: Final = {
    "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "in": "IN",
    "issubset": "ISSUBSET", "issuperset": "ISSUPERSET", "like": "LIKE", "matches": "MATCHES",
}  # fmt: skip
_KEYWORDS: Final = frozenset(
    {"and", "or", "not", "in", "like", "matches", "issubset", "issuperset", "true", "false", "null"}
)


def _chain(kind: type[And] | type[Or], items: Sequence[Cond]) -> Cond:
    """``items`` joined by AND/OR, flattened: ``(a AND b) AND c`` is ``a AND b AND c``.

    Flat chains are the normal form on both sides of the translation, since Jinja reads
    ``a and b and c`` as a left-nested tree whatever parentheses the condition had."""
    flat: list[Cond] = []
    for item in items:
        flat.extend(item.items if isinstance(item, kind) else (item,))
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


def _depth(node: Cond) -> int:
    """How deeply ``node`` nests once written as an expression (each AND/OR link counts)."""
    if isinstance(node, Not):
        return 1 + _depth(node.item)
    if isinstance(node, And | Or):
        return max(_depth(item) for item in node.items) + len(node.items) - 1
    return 1


# -- the parser -----------------------------------------------------------------------------

# A character a bare word may hold: everything but space, parentheses, quotes, comma and the
# characters of the comparison operators. Keywords, numbers and variables must end where a word
# would, so ``android`` is a word and not ``and`` + ``roid``.
_WORD_CHAR = r"""[^\s()'",=!<>]"""
_END = f"(?!{_WORD_CHAR})"


def _keyword(word: str) -> str:
    return f"{word.upper()}.3: /{word}{_END}/i"


_GRAMMAR = "\n".join(
    [
        r"""
?start: disjunction
disjunction: conjunction (OR conjunction)*
conjunction: negation (AND negation)*
negation: NOT negation                          -> negated
        | LPAR disjunction RPAR                 -> group
        | operand NOT? compare_op operand       -> compare
        | operand NOT? IN LPAR operand (COMMA operand)* RPAR -> member_list
        | operand NOT? IN operand               -> member
        | operand NOT? named_op operand         -> compare
        | operand                               -> bare
compare_op: EQ | NE | LT | LE | GT | GE
named_op: LIKE | MATCHES | ISSUBSET | ISSUPERSET
operand: VAR | SQ_STRING | DQ_STRING | NUMBER | TRUE | FALSE | NULL | WORD
EQ: "==" | "="
NE: "!=" | "<>"
LE: "<="
LT: "<"
GE: ">="
GT: ">"
LPAR: "("
RPAR: ")"
COMMA: ","
SQ_STRING: /'(?:[^'\\]|\\.)*'/s
DQ_STRING: /"(?:[^"\\]|\\.)*"/s
%ignore /\s+/
""",
        *(_keyword(word) for word in sorted(_KEYWORDS)),
        f"VAR.2: /{NAME_PATTERN}(?::value)?{_END}/",
        rf"NUMBER.2: /-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?{_END}/",
        f"WORD.1: /{_WORD_CHAR}+/",
    ]
)


@dataclass(frozen=True)
class _Parsed:
    """A condition under construction: the node, its nesting so far and where it starts."""

    node: Cond
    depth: int
    column: int


@dataclass(frozen=True)
class _Value:
    value: Var | Lit
    column: int


def _error(column: int, message: str) -> ConditionError:
    return ConditionError(
        f"condition: at column {column}: {message}", field="condition", column=column
    )


def _decode_string(text: str) -> str:
    """The value of a quoted string: ``\\'``, ``\\"`` and ``\\\\`` are escapes; any other
    backslash stays itself, so a MATCHES pattern like ``'^\\d+$'`` means what it says."""
    out: list[str] = []
    index, end = 1, len(text) - 1
    while index < end:
        char = text[index]
        if char == "\\" and index + 1 < end and text[index + 1] in "'\"\\":
            out.append(text[index + 1])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _number(token: Token) -> int | float:
    text = str(token)
    try:
        value: int | float = int(text) if re.fullmatch(r"-?\d+", text) else float(text)
    except ValueError:  # more digits than Python converts
        raise _error(token.column or 1, f"the number {text[:32]}… is too long") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(token.column or 1, f"the number {text[:32]} is out of range")
    return value


class _Build(Transformer[Token, _Parsed]):
    """Builds the syntax tree while the LALR parser reduces, bottom-up and without recursion,
    so a deeply nested condition is refused when it passes :data:`MAX_DEPTH`, not later."""

    def operand(self, children: list[Token]) -> _Value:
        token = children[0]
        column = token.column or 1
        text = str(token)
        kind = token.type
        if kind == "VAR":
            return _Value(Var(text.removesuffix(":value")), column)
        if kind in ("SQ_STRING", "DQ_STRING"):
            return _Value(Lit(_decode_string(text)), column)
        if kind == "NUMBER":
            return _Value(Lit(_number(token)), column)
        if kind in ("TRUE", "FALSE"):
            return _Value(Lit(kind == "TRUE"), column)
        if kind == "NULL":
            return _Value(Lit(None), column)
        if text.lower() in _KEYWORDS:
            raise _error(column, f"{text!r} is a keyword; quote it to compare with the word")
        if "__" in text and re.search(NAME_PATTERN, text):
            raise _error(
                column,
                f"{text[:64]!r} is not a variable reference: write __name__:value on its own, "
                "or quote the text",
            )
        return _Value(Lit(text), column)

    def compare_op(self, children: list[Token]) -> str:
        return {"EQ": "==", "NE": "!=", "LT": "<", "LE": "<=", "GT": ">", "GE": ">="}[
            children[0].type
        ]

    def named_op(self, children: list[Token]) -> str:
        return children[0].type.lower()

    def compare(self, children: list[Any]) -> _Parsed:
        left, *middle, right = children
        op: str = middle[-1]
        if op in _TEXT_OPS and isinstance(right.value, Lit):
            _check_pattern(op, right.value.value, right.column)
        node: Cond = Cmp(op, left.value, right.value)
        return self._maybe_not(node, middle, left.column)

    def member(self, children: list[Any]) -> _Parsed:
        left, *middle, right = children
        node: Cond = Cmp("in", left.value, right.value)
        return self._maybe_not(node, middle, left.column)

    def member_list(self, children: list[Any]) -> _Parsed:
        left = children[0]
        values = tuple(child.value for child in children if isinstance(child, _Value))[1:]
        negated = any(isinstance(c, Token) and c.type == "NOT" for c in children)
        node: Cond = Cmp("in", left.value, Items(values))
        return _Parsed(Not(node) if negated else node, 2 if negated else 1, left.column)

    @staticmethod
    def _maybe_not(node: Cond, middle: list[Any], column: int) -> _Parsed:
        if any(isinstance(item, Token) and item.type == "NOT" for item in middle):
            return _Parsed(Not(node), 2, column)
        return _Parsed(node, 1, column)

    def bare(self, children: list[_Value]) -> _Parsed:
        (operand,) = children
        value = operand.value
        if isinstance(value, Var):
            return _Parsed(Cmp("==", value, Lit(True)), 1, operand.column)
        if isinstance(value.value, bool):
            return _Parsed(value, 1, operand.column)
        raise _error(
            operand.column,
            f"{_cacao_operand(value)[:64]} alone is not a condition; compare it "
            "(for example __name__:value = 'yes')",
        )

    def negated(self, children: list[Any]) -> _Parsed:
        token, inner = children
        return _limited(Not(inner.node), inner.depth + 1, token.column or 1)

    def group(self, children: list[Any]) -> _Parsed:
        token, inner, _ = children
        return _limited(inner.node, inner.depth + 1, token.column or 1)

    def conjunction(self, children: list[Any]) -> _Parsed:
        return _joined(And, [child for child in children if isinstance(child, _Parsed)])

    def disjunction(self, children: list[Any]) -> _Parsed:
        return _joined(Or, [child for child in children if isinstance(child, _Parsed)])


def _limited(node: Cond, depth: int, column: int) -> _Parsed:
    if depth > MAX_DEPTH:
        raise _error(
            column,
            f"the condition nests too deeply (more than {MAX_DEPTH} levels of parentheses, "
            "NOT, AND and OR)",
        )
    return _Parsed(node, depth, column)


def _joined(kind: type[And] | type[Or], parts: list[_Parsed]) -> _Parsed:
    if len(parts) == 1:
        return parts[0]
    deepest = 0
    for links, part in enumerate(parts):  # the k-th part nests under k links of the chain
        deepest = max(deepest, part.depth)
        _limited(part.node, deepest + links, part.column)
    node = _chain(kind, [part.node for part in parts])
    return _Parsed(node, deepest + len(parts) - 1, parts[0].column)


@functools.cache
def _parser() -> Lark:
    """The condition parser, built on first use: building it takes a fifth of a second, which
    every command that merely imports the engine would otherwise pay."""
    return Lark(_GRAMMAR, parser="lalr", lexer="contextual", transformer=_Build())


_DESCRIBE: Final = {
    "VAR": "a value", "SQ_STRING": "a value", "DQ_STRING": "a value", "NUMBER": "a value",
    "TRUE": "a value", "FALSE": "a value", "NULL": "a value", "WORD": "a value",
    "EQ": "an operator", "NE": "an operator", "LT": "an operator", "LE": "an operator",
    "GT": "an operator", "GE": "an operator", "IN": "an operator", "LIKE": "an operator",
    "MATCHES": "an operator", "ISSUBSET": "an operator", "ISSUPERSET": "an operator",
    "NOT": "NOT", "LPAR": "'('", "RPAR": "')'", "COMMA": "','", "AND": "AND", "OR": "OR",
    "$END": "the end of the condition",
}  # fmt: skip
_ORDER: Final = (
    "a value",
    "an operator",
    "NOT",
    "'('",
    "')'",
    "','",
    "AND",
    "OR",
    "the end of the condition",
)
_OPERATORS_TEXT: Final = "an operator (= != < <= > >= IN LIKE MATCHES ISSUBSET ISSUPERSET)"


def _expected(names: Iterable[Any]) -> str:
    wanted = {_DESCRIBE.get(str(name), str(name)) for name in names}
    ordered = [item for item in _ORDER if item in wanted] + sorted(wanted - set(_ORDER))
    text = ", ".join(_OPERATORS_TEXT if item == "an operator" else item for item in ordered)
    return text or "nothing more"


def _accepted(exc: UnexpectedInput, fallback: Iterable[Any]) -> Iterable[Any]:
    """The tokens that would have fitted where ``exc`` happened.

    LALR merges look-aheads, so lark's own ``expected`` after a value lists ``,`` and ``)`` even
    at the top level; the interactive parser tries each token for real."""
    parser = getattr(exc, "interactive_parser", None)
    if parser is not None:
        try:
            return set(parser.accepts())
        except (UnexpectedInput, ConditionError):  # a trial reduction broke a limit
            pass
    return fallback


def _syntax_error(condition: str, exc: UnexpectedInput) -> ConditionError:
    """A lark error as one sentence: the column, what was found, what would have fitted."""
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        column = exc.column if isinstance(exc.column, int) and exc.column > 0 else 1
        found = repr(str(exc.token)[:32])
        expected = _expected(_accepted(exc, exc.expected))
        return _error(column, f"unexpected {found}; expected {expected}")
    if isinstance(exc, UnexpectedToken | UnexpectedEOF):
        expected = _expected(_accepted(exc, exc.expected))
        return _error(len(condition) + 1, f"the condition ends early; expected {expected}")
    if isinstance(exc, UnexpectedCharacters):
        column = exc.column if isinstance(exc.column, int) and exc.column > 0 else 1
        position = exc.pos_in_stream if isinstance(exc.pos_in_stream, int) else column - 1
        char = condition[position] if 0 <= position < len(condition) else ""
        if char in "'\"":
            return _error(column, f"the string opened here is not closed with {char}")
        expected = _expected(_accepted(exc, exc.allowed))
        return _error(column, f"unexpected {char!r}; expected {expected}")
    return _error(1, str(exc).splitlines()[0])  # pragma: no cover - lark has no other kind


@functools.lru_cache(maxsize=1024)
def parse_condition(condition: str) -> Cond:
    """The syntax tree of a CACAO condition; :class:`ConditionError` naming the column."""
    if len(condition) > MAX_SOURCE:
        raise _error(MAX_SOURCE + 1, f"the condition is longer than {MAX_SOURCE} characters")
    if not condition.strip():
        raise _error(1, "the condition is empty")
    try:
        parsed = _parser().parse(condition)
    except UnexpectedInput as exc:
        raise _syntax_error(condition, exc) from None
    if not isinstance(parsed, _Parsed):  # pragma: no cover - the grammar always ends in one
        raise _error(1, "not a condition")
    return parsed.node


# -- writing expressions and conditions ------------------------------------------------------


def _jinja_string(text: str) -> str:
    """A Jinja string literal for ``text`` in printable ASCII only.

    Quotes and backslashes are escaped, braces become ``\\x7b``/``\\x7d`` (so the expression
    never holds ``{{``, ``}}`` or ``{%`` even inside a literal) and every other character outside
    printable ASCII is a ``\\x``/``\\u``/``\\U`` escape, which Jinja decodes exactly (it would
    turn a raw carriage return into a newline)."""
    out = ["'"]
    for char in text:
        code = ord(char)
        if char in "\\'":
            out.append("\\" + char)
        elif char in "{}":
            out.append(f"\\x{code:02x}")
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append("'")
    return "".join(out)


def _jinja_operand(operand: Operand) -> str:
    if isinstance(operand, Var):
        return f"vars['{operand.name}']"
    if isinstance(operand, Items):
        return "[" + ", ".join(_jinja_operand(item) for item in operand.items) + "]"
    value = operand.value
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _jinja_string(value)
    return repr(value)


def _jinja(node: Cond) -> str:
    if isinstance(node, Lit):
        return "true" if node.value else "false"
    if isinstance(node, Cmp):
        left, right = _jinja_operand(node.left), _jinja_operand(node.right)
        if node.op in _TEXT_OPS:
            return f"{_TEXT_OPS[node.op]}({left}, {right})"
        return f"cacao_compare('{node.op}', {left}, {right})"
    if isinstance(node, Not):
        inner = _jinja(node.item)
        return f"not ({inner})" if isinstance(node.item, And | Or) else f"not {inner}"
    if isinstance(node, And):
        return " and ".join(
            f"({_jinja(i)})" if isinstance(i, Or) else _jinja(i) for i in node.items
        )
    return " or ".join(_jinja(item) for item in node.items)


def _cacao_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _cacao_operand(operand: Operand) -> str:
    if isinstance(operand, Var):
        return f"{operand.name}:value"
    if isinstance(operand, Items):
        return "(" + ", ".join(_cacao_operand(item) for item in operand.items) + ")"
    value = operand.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _cacao_string(value)
    return repr(value)


def _cacao(node: Cond) -> str:
    if isinstance(node, Lit):
        return "true" if node.value else "false"
    if isinstance(node, Cmp):
        op = _CACAO_OPS[node.op]
        return f"{_cacao_operand(node.left)} {op} {_cacao_operand(node.right)}"
    if isinstance(node, Not):
        inner = _cacao(node.item)
        return f"NOT ({inner})" if isinstance(node.item, And | Or) else f"NOT {inner}"
    if isinstance(node, And):
        return " AND ".join(
            f"({_cacao(i)})" if isinstance(i, Or) else _cacao(i) for i in node.items
        )
    return " OR ".join(_cacao(item) for item in node.items)


def condition_to_expression(condition: str) -> str:
    """The Quell expression with the meaning of a CACAO condition.

    Variables become ``vars['__name__']``, comparisons calls of :data:`CONDITION_FUNCTIONS`::

        __count__:value > 5 AND NOT __ok__:value
        cacao_compare('>', vars['__count__'], 5) and not cacao_compare('==', vars['__ok__'], true)

    The expression is held to :data:`MAX_SOURCE` characters too, since Quell compiles no longer
    expression (escaped non-ASCII text can make it several times longer than the condition).
    """
    expression = _jinja(parse_condition(condition))
    if len(expression) > MAX_SOURCE:
        raise _error(
            1, f"the condition makes an expression longer than {MAX_SOURCE} characters; shorten it"
        )
    return expression


def evaluate_condition(condition: str, variables: Mapping[str, Any]) -> bool:
    """The condition's truth for ``variables`` (``{"__name__": value}``), evaluated in Python:
    the reference semantics that :func:`condition_to_expression`'s output has in the sandbox."""
    return _evaluate(parse_condition(condition), variables)


def _operand_value(operand: Operand, variables: Mapping[str, Any]) -> Any:
    if isinstance(operand, Var):
        return variables.get(operand.name)
    if isinstance(operand, Items):
        return [_operand_value(item, variables) for item in operand.items]
    return operand.value


def _evaluate(node: Cond, variables: Mapping[str, Any]) -> bool:
    if isinstance(node, Lit):
        return bool(node.value)
    if isinstance(node, Cmp):
        left = _operand_value(node.left, variables)
        right = _operand_value(node.right, variables)
        if node.op == "like":
            return cacao_like(left, right)
        if node.op == "matches":
            return cacao_matches(left, right)
        return cacao_compare(node.op, left, right)
    if isinstance(node, Not):
        return not _evaluate(node.item, variables)
    if isinstance(node, And):
        return all(_evaluate(item, variables) for item in node.items)
    return any(_evaluate(item, variables) for item in node.items)


# -- reading expressions back ----------------------------------------------------------------

# Parses only, never renders, so HTML autoescaping has no say here.
_READER = Environment(autoescape=False, keep_trailing_newline=True)  # noqa: S701
_JINJA_OPS: Final = {"eq": "==", "ne": "!=", "lt": "<", "lteq": "<=", "gt": ">", "gteq": ">="}


class _NotCacao(Exception):
    """The expression holds something CACAO cannot say."""


def _read_variable(node: nodes.Node) -> Var | None:
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "vars"
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
        and _NAME.match(node.arg.value)
    ):
        return Var(node.arg.value)
    if isinstance(node, nodes.Name) and node.ctx == "load" and _NAME.match(node.name):
        return Var(node.name)
    return None


def _read_operand(node: nodes.Node) -> Var | Lit:
    variable = _read_variable(node)
    if variable is not None:
        return variable
    sign = 1
    if isinstance(node, nodes.Neg):
        sign, node = -1, node.node
        if not (isinstance(node, nodes.Const) and type(node.value) in (int, float)):
            raise _NotCacao
    if isinstance(node, nodes.Const):
        value = node.value
        if value is None or type(value) in (str, bool):
            return Lit(value)
        if type(value) is int or (type(value) is float and math.isfinite(value)):
            return Lit(sign * value)
    raise _NotCacao


def _read_right(op: str, node: nodes.Node) -> Operand:
    if op == "in" and isinstance(node, nodes.List | nodes.Tuple) and node.items:
        return Items(tuple(_read_operand(item) for item in node.items))
    return _read_operand(node)


def _read_call(node: nodes.Call) -> Cond:
    if node.kwargs or node.dyn_args is not None or node.dyn_kwargs is not None:
        raise _NotCacao
    if not isinstance(node.node, nodes.Name):
        raise _NotCacao
    name, args = node.node.name, node.args
    if name == "cacao_compare" and len(args) == 3:
        op_node = args[0]
        if isinstance(op_node, nodes.Const) and op_node.value in COMPARE_OPS:
            op = str(op_node.value)
            return Cmp(op, _read_operand(args[1]), _read_right(op, args[2]))
    for op, function in _TEXT_OPS.items():
        if name == function and len(args) == 2:
            pattern = _read_operand(args[1])
            if isinstance(pattern, Lit) and not _pattern_ok(op, pattern.value):
                raise _NotCacao
            return Cmp(op, _read_operand(args[0]), pattern)
    raise _NotCacao


def _read(node: nodes.Node) -> Cond:
    """The condition a Jinja expression node means, or :class:`_NotCacao`."""
    if isinstance(node, nodes.And | nodes.Or):
        kind: type[And] | type[Or] = And if isinstance(node, nodes.And) else Or
        items: list[nodes.Node] = []
        while isinstance(node, nodes.And if kind is And else nodes.Or):  # a left-nested chain
            items.append(node.right)
            node = node.left
        items.append(node)
        return _chain(kind, [_read(item) for item in reversed(items)])
    if isinstance(node, nodes.Not):
        return Not(_read(node.node))
    if isinstance(node, nodes.Call):
        return _read_call(node)
    if isinstance(node, nodes.Compare) and len(node.ops) == 1:
        operand = node.ops[0]
        if operand.op in _JINJA_OPS:
            return Cmp(
                _JINJA_OPS[operand.op], _read_operand(node.expr), _read_operand(operand.expr)
            )
        if operand.op in ("in", "notin"):
            member = Cmp("in", _read_operand(node.expr), _read_right("in", operand.expr))
            return member if operand.op == "in" else Not(member)
        raise _NotCacao
    if isinstance(node, nodes.Const) and isinstance(node.value, bool):
        return Lit(node.value)
    variable = _read_variable(node)
    if variable is not None:
        return Cmp("==", variable, Lit(True))
    raise _NotCacao


def expression_to_condition(expression: str) -> str | None:
    """The CACAO condition for a Quell expression, or None when CACAO cannot say it.

    Reads what :func:`condition_to_expression` writes, and plain comparisons of variables
    (``vars['__a__'] == 'x'``, ``__a__ != 3``, ``__a__ in ['x', 'y']``) for convenience; those
    come back with CACAO's coercing comparison, which is how the condition will then run."""
    text = expression.strip()
    if text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1:
        text = text[2:-2].strip()  # as compile_expression reads it
    if not text or len(text) > MAX_SOURCE:
        return None
    try:
        tree = _READER.parse("{{ " + text + " }}")
    except (TemplateSyntaxError, RecursionError):
        return None
    body = tree.body
    if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
        return None
    try:
        node = _read(body[0].nodes[0])
    except (_NotCacao, RecursionError):
        return None
    if _depth(node) > MAX_DEPTH:
        return None
    return _cacao(node)


# -- the functions generated expressions call ------------------------------------------------

_DECIMAL = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*\Z")


def _plain(value: Any) -> Any:
    """A missing variable (Jinja's undefined) is None, as CACAO's null."""
    return None if isinstance(value, Undefined) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_number(value: Any) -> int | float | None:
    if _is_number(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) and len(value) <= 128 and _DECIMAL.match(value):
        text = value.strip()
        try:
            return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:  # pragma: no cover - the pattern admits only decimals
            return None
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower())
    return None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _equal(left: Any, right: Any) -> bool:
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, bool) or isinstance(right, bool):
        a, b = _as_bool(left), _as_bool(right)
        return a is not None and a == b
    if _is_number(left) or _is_number(right):
        x, y = _as_number(left), _as_number(right)
        if x is not None and y is not None:
            return x == y
    containers = (list, tuple, dict)
    if isinstance(left, containers) or isinstance(right, containers):
        return isinstance(left, containers) and type(left) is type(right) and left == right
    return _text(left) == _text(right)


def _ordered(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None or isinstance(left, bool) or isinstance(right, bool):
        return False
    x, y = _as_number(left), _as_number(right)
    if _is_number(left) or _is_number(right) or (x is not None and y is not None):
        if x is None or y is None:
            return False
        pair: tuple[Any, Any] = (x, y)
    elif isinstance(left, str) and isinstance(right, str):
        pair = (left, right)
    else:
        return False
    a, b = pair
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None


def _contains(left: Any, right: Any) -> bool:
    if isinstance(right, list | tuple | set | frozenset):
        return any(_equal(left, _plain(item)) for item in right)
    if isinstance(right, Mapping):
        return any(_equal(left, key) for key in right)
    if isinstance(right, str) and "/" in right:
        network, address = _network(right), _network(left)
        if network is not None and address is not None and "/" not in str(left):
            return address.version == network.version and address.subnet_of(network)  # type: ignore[arg-type]
    return _equal(left, right)


def _subset(left: Any, right: Any) -> bool:
    inner, outer = _network(left), _network(right)
    if inner is None or outer is None or inner.version != outer.version:
        return False
    return inner.subnet_of(outer)  # type: ignore[arg-type]


def cacao_compare(op: str, left: Any, right: Any) -> bool:
    """``left op right`` with CACAO's coercions (see the module docstring); never raises for
    values of the wrong type, only for an ``op`` that is not one of :data:`COMPARE_OPS`."""
    left, right = _plain(left), _plain(right)
    if op == "==":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op in ("<", "<=", ">", ">="):
        return _ordered(op, left, right)
    if op == "in":
        return _contains(left, right)
    if op == "issubset":
        return _subset(left, right)
    if op == "issuperset":
        return _subset(right, left)
    raise ValueError(f"cacao_compare: {op!r} is not a comparison")


@functools.lru_cache(maxsize=256)
def _like_parts(pattern: str) -> tuple[tuple[re.Pattern[str], int], ...]:
    """The ``%``-separated pieces of a LIKE pattern: each a regex (``_`` is ``.``, the rest
    literal) and its width, since every piece character matches exactly one character."""
    return tuple(
        (
            re.compile("".join("." if c == "_" else re.escape(c) for c in piece), re.DOTALL),
            len(piece),
        )
        for piece in pattern.split("%")
    )


def cacao_like(value: Any, pattern: Any) -> bool:
    """Whether the whole text matches the SQL LIKE ``pattern`` (``%`` any run, ``_`` one char).

    Never backtracks: each ``%``-separated piece has a fixed width, so taking the leftmost
    place for each piece in turn is right, and each search is linear in the text."""
    value, pattern = _plain(value), _plain(pattern)
    if value is None or pattern is None:
        return False
    text, wanted = _text(value), _text(pattern)
    if len(wanted) > MAX_PATTERN:
        raise ValueError(f"a LIKE pattern is longer than {MAX_PATTERN} characters")
    (first, _), *rest = _like_parts(wanted)
    if not rest:
        return first.fullmatch(text) is not None
    *middle, (last, width) = rest
    found = first.match(text)
    if found is None:
        return False
    position = found.end()
    for piece, _ in middle:
        found = piece.search(text, position)
        if found is None:
            return False
        position = found.end()
    start = len(text) - width
    return start >= position and last.fullmatch(text, start) is not None


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported to its author, not logged
    return options


_RE2_OPTIONS = _re2_options()


def _regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused, or None.

    MATCHES runs on RE2 (``google-re2``), whose matching takes time linear in the text
    whatever the pattern: no pattern, however written (``(a|a)*b``, ``(a+)+``), can stall a
    worker. RE2 has no backreferences or lookaround; such a pattern is refused, as is one
    longer than :data:`MAX_PATTERN` characters."""
    if len(pattern) > MAX_PATTERN:
        return f"longer than {MAX_PATTERN} characters"
    try:
        re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        return f"not a regular expression RE2 runs ({detail})"
    return None


@functools.lru_cache(maxsize=256)
def _compiled_regex(pattern: str) -> Any:
    problem = _regex_problem(pattern)
    if problem is not None:
        raise ValueError(f"MATCHES pattern refused: {problem}")
    return re2.compile(pattern, options=_RE2_OPTIONS)


def cacao_matches(value: Any, pattern: Any) -> bool:
    """Whether the regular expression ``pattern`` matches somewhere in the text (STIX MATCHES).

    A pattern that fails :func:`_regex_problem`'s checks raises ValueError (which Quell's
    expression evaluation reports as an ExpressionError); a literal pattern is checked already
    when the condition is translated."""
    value, pattern = _plain(value), _plain(pattern)
    if value is None or pattern is None:
        return False
    return _compiled_regex(_text(pattern)).search(_text(value)) is not None


def _pattern_ok(op: str, pattern: Scalar) -> bool:
    if not isinstance(pattern, str):
        return True
    if op == "like":
        return len(pattern) <= MAX_PATTERN
    return _regex_problem(pattern) is None


def _check_pattern(op: str, pattern: Scalar, column: int) -> None:
    if not isinstance(pattern, str):
        return
    if op == "like" and len(pattern) > MAX_PATTERN:
        raise _error(column, f"the LIKE pattern is longer than {MAX_PATTERN} characters")
    if op == "matches":
        problem = _regex_problem(pattern)
        if problem is not None:
            raise _error(column, f"the MATCHES pattern is refused: {problem}")


CONDITION_FUNCTIONS: dict[str, Callable[..., bool]] = {
    "cacao_compare": cacao_compare,
    "cacao_like": cacao_like,
    "cacao_matches": cacao_matches,
}


# -- text with variable references -----------------------------------------------------------


def variable_references(text: str) -> list[str]:
    """The ``__name__`` of every ``__name__:value`` in ``text``, in order of first use."""
    return list(dict.fromkeys(match.group(1) for match in _REFERENCE.finditer(text)))


def _segments(text: str) -> list[tuple[bool, str]]:
    """``text`` as ``(is_reference, literal text or name)`` pieces; literal pieces not empty."""
    pieces: list[tuple[bool, str]] = []
    position = 0
    for match in _REFERENCE.finditer(text):
        if match.start() > position:
            pieces.append((False, text[position : match.start()]))
        pieces.append((True, match.group(1)))
        position = match.end()
    if position < len(text):
        pieces.append((False, text[position:]))
    return pieces


_ATOM = re.compile(r"[{}]+|\r|[^{}\r]+")


def text_to_template(text: str) -> str:
    """A Quell template that renders to ``text`` with each ``__name__:value`` filled in.

    ``touch __path__:value`` becomes ``touch {{ vars['__path__'] }}``. Everything else comes
    out as itself: braces that Jinja would read (``{{``, ``}}``, ``{%``, ``{#``, and a brace
    next to a ``{{ … }}``), carriage returns (Jinja turns them into newlines) and a final
    newline (Jinja drops it) are written as escaped string literals, ``{{ '\\x7b\\x7b' }}``.
    Text that needs none of that comes back unchanged, and so is no template at all."""
    # (kind, value): "ref" holds a name; "text" literal text; "lit" literal text to escape
    atoms: list[tuple[str, str]] = []
    for is_reference, piece in _segments(text):
        if is_reference:
            atoms.append(("ref", piece))
            continue
        for match in _ATOM.finditer(piece):
            atoms.append(("lit" if match.group() == "\r" else "text", match.group()))
    for index, (kind, value) in enumerate(atoms):  # braces Jinja reads whatever surrounds them
        following = atoms[index + 1][1] if index + 1 < len(atoms) else ""
        if (
            kind == "text"
            and value[0] in "{}"
            and (
                "{{" in value
                or "}}" in value
                or (value[-1] == "{" and following.startswith(("%", "#")))
            )
        ):
            atoms[index] = ("lit", value)
    if all(kind == "text" for kind, _ in atoms):
        return text
    kind, value = atoms[-1]
    if kind == "text" and value.endswith("\n"):  # Jinja drops one final newline
        atoms[-1:] = [("text", value[:-1]), ("lit", "\n")] if value[:-1] else [("lit", "\n")]
    for index, (kind, value) in enumerate(atoms):  # a brace that would touch a {{ … }}
        after = atoms[index + 1][0] if index + 1 < len(atoms) else "text"
        before = atoms[index - 1][0] if index > 0 else "text"
        if kind == "text" and (
            (value[-1] == "{" and after != "text") or (value[0] == "}" and before != "text")
        ):
            atoms[index] = ("lit", value)
    out = [
        "{{ vars['" + value + "'] }}"
        if kind == "ref"
        else "{{ " + _jinja_string(value) + " }}"
        if kind == "lit"
        else value
        for kind, value in atoms
    ]
    return _keep_edges("".join(out))


def _keep_edges(template: str) -> str:
    """Quell reads a template that is one ``{{ … }}`` with only space around it as that bare
    expression, dropping the space: keep it by writing the leading space (or, when there is
    none, the trailing space) as a literal block, which makes the template mixed text."""
    stripped = template.strip()
    if stripped == template or not _single_block(stripped):
        return template
    lead = template[: len(template) - len(template.lstrip())]
    body = template[len(lead) :]
    if lead:
        return "{{ " + _jinja_string(lead) + " }}" + body
    trail = body[len(body.rstrip()) :]
    return body[: len(body) - len(trail)] + "{{ " + _jinja_string(trail) + " }}"


def _single_block(stripped: str) -> bool:
    return stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1


def template_to_text(template: str) -> str | None:
    """The CACAO text for a template :func:`text_to_template` wrote, or None.

    None when the template computes anything but variable references and escaped literals, or
    when its literal text holds ``__name__:value`` (CACAO would substitute what Quell prints)."""
    if "{{" not in template:  # Quell does not render it: text that needed no escaping is itself
        return template if text_to_template(template) == template else None
    if "\r" in template or template.endswith("\n"):
        return None  # Jinja would change those characters: not written by text_to_template
    if len(template) > 16 * MAX_SOURCE:  # far past what Quell compiles: not worth parsing
        return None
    stripped = template.strip()
    if stripped != template and _single_block(stripped):
        return None
    try:
        tree = _READER.parse(template)
    except (TemplateSyntaxError, RecursionError):
        return None
    pieces: list[tuple[bool, str]] = []
    for output in tree.body:
        if not isinstance(output, nodes.Output):
            return None
        for node in output.nodes:
            piece = _template_piece(node)
            if piece is None:
                return None
            if not piece[0] and pieces and not pieces[-1][0]:
                pieces[-1] = (False, pieces[-1][1] + piece[1])
            elif piece[1]:
                pieces.append(piece)
    text = "".join(f"{value}:value" if is_reference else value for is_reference, value in pieces)
    return text if _segments(text) == pieces else None


def _template_piece(node: nodes.Node) -> tuple[bool, str] | None:
    if isinstance(node, nodes.TemplateData):
        return False, node.data
    variable = _read_variable(node)
    if variable is not None:
        return True, variable.name
    if (  # what text_to_template escapes: braces, carriage returns and edge whitespace
        isinstance(node, nodes.Const)
        and isinstance(node.value, str)
        and node.value
        and all(char in "{}" or char.isspace() for char in node.value)
    ):
        return False, node.value
    return None


__all__ = [
    "COMPARE_OPS",
    "CONDITION_FUNCTIONS",
    "MAX_DEPTH",
    "MAX_PATTERN",
    "MAX_SOURCE",
    "And",
    "Cmp",
    "Cond",
    "ConditionError",
    "Items",
    "Lit",
    "Not",
    "Operand",
    "Or",
    "Var",
    "cacao_compare",
    "cacao_like",
    "cacao_matches",
    "condition_to_expression",
    "evaluate_condition",
    "expression_to_condition",
    "parse_condition",
    "template_to_text",
    "text_to_template",
    "variable_references",
]
