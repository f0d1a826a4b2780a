"""The playbook expression language: Jinja2 expressions in a locked-down sandbox.

Playbooks compute values with ``{{ … }}`` templates (``with:`` inputs, ``out:`` write-backs)
and decide with bare expressions (``if``, ``while``, ``switch``, trigger conditions)::

    steps.lookup.output.verdict == 'malicious' and alert.severity_id >= severity('high')
    {{ incident.observables | of_type('ipv4') | map(attribute='value') | list }}
    Blocked {{ steps.block.output.count }} addresses until {{ (now() + duration('24h')) | iso }}

A template that is exactly one ``{{ expression }}`` gives the expression's value with its type
(a list stays a list); text around or between expressions makes a string.

What keeps it safe (nothing here calls Python's ``eval`` on user text):

- Jinja2's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` compiles the expression; no
  dunder or internal attribute is reachable and no container can be mutated.
- Only expressions: a template may not contain ``{% … %}`` statements, so it has no loops or
  assignments. The names an expression sees are the run's data and the functions below; the
  default Jinja globals (``range``, ``lipsum``, ``cycler`` …) are removed.
- Methods may be called only from a short allow-list (``startswith``, ``split``, ``get`` …);
  the filters that size their output from an argument (``center``, ``format``, ``indent`` …)
  are not offered. What can make something much larger than its operands is sized before it
  runs: ``*``, ``+``, ``~`` and ``**``, the ``replace`` method and filter, ``join``, ``sum``,
  ``to_json``, ``batch`` and ``slice``, ``%`` (fields of at most 100 characters), and what
  prints, escapes or compares every element of a list. Each is charged against what one
  evaluation may build in all (MAX_BUILT). So no expression builds a huge string, list or
  number, and none is computed while compiling (no constant folding).
- Every evaluation has a deadline (checked at each filter and function call) and its result a
  size limit; source text and nesting are limited too. Errors are :class:`ExpressionError`
  naming where.
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import itertools
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import orjson
from jinja2 import (
    ChainableUndefined,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    nodes,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment

from quell.durations import format_duration, parse_duration
from quell.errors import InvalidInput
from quell.ingest.model import Severity
from quell.ingest.observables import defang as _defang
from quell.ingest.observables import refang as _refang
from quell.netaddr import host_address, host_network
from quell.playbooks.cacao.conditions import CONDITION_FUNCTIONS
from quell.playbooks.cacao.functions import cacao_result, cacao_text

MAX_SOURCE = 8 * 1024  # characters in one expression or template
MAX_OUTPUT = 1024 * 1024  # bytes of JSON (or characters) an evaluation may produce
MAX_ITEMS = 100_000  # elements a repeated list may have
MAX_WORK = 8 * MAX_OUTPUT  # what a filter that copies every element may be given
MAX_BUILT = 8 * MAX_OUTPUT  # what one evaluation may build in all
DEADLINE = 0.25  # seconds one evaluation may take

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar(
    "quell_expr_deadline", default=0.0
)
# What the evaluation in progress has built so far, in bytes (see _charge).
_budget: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "quell_expr_budget", default=None
)


class ExpressionError(InvalidInput):
    """An expression that does not compile, or failed while evaluating; ``field`` says where."""


# -- the environment ---------------------------------------------------------------------------

# Methods an expression may call, by the type that has them. Everything else callable is off.
_SAFE_METHODS: dict[type, frozenset[str]] = {
    str: frozenset(
        {
            "startswith", "endswith", "lower", "upper", "strip", "lstrip", "rstrip", "split",
            "rsplit", "splitlines", "replace", "find", "rfind", "count", "isdigit", "isalpha",
            "isalnum", "title", "capitalize", "casefold", "partition", "rpartition",
            "removeprefix", "removesuffix",
        }
    ),
    dict: frozenset({"get", "keys", "values", "items"}),
    list: frozenset({"index", "count"}),
    tuple: frozenset({"index", "count"}),
    datetime: frozenset({"isoformat", "timestamp", "weekday", "isoweekday", "date"}),
    date: frozenset({"isoformat", "weekday", "isoweekday"}),
    timedelta: frozenset({"total_seconds"}),
}  # fmt: skip

# Jinja's own filters that are bounded by their input: kept. Left out: those sized by an
# argument (center, indent, wordwrap, format, truncate's leeway is fine but unneeded), the
# HTML ones (escape, safe, urlize, xmlattr, striptags), random, pprint and attr.
_KEPT_FILTERS = frozenset(
    {
        "abs", "batch", "capitalize", "count", "d", "default", "dictsort", "first", "float",
        "groupby", "int", "items", "join", "last", "length", "list", "lower", "map", "max",
        "min", "reject", "rejectattr", "replace", "reverse", "round", "select", "selectattr",
        "slice", "sort", "string", "sum", "title", "trim", "unique", "upper", "urlencode",
        "wordcount",
    }
)  # fmt: skip


def _check_deadline() -> None:
    deadline = _deadline.get()
    if deadline and time.monotonic() > deadline:
        raise ExpressionError(f"expression took longer than {DEADLINE:g}s")


def _guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with the evaluation deadline checked before it runs."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        return function(*args, **kwargs)

    return guarded


def _weight(value: Any, limit: int = MAX_OUTPUT) -> int:
    """About how large ``value`` prints (as JSON, or as Python's text of it), counted only
    until it passes ``limit``: a string its length and quotes, a list or dict its brackets,
    commas and keys, a number the digits it may take (a 4096-bit integer prints 1,234 of
    them), a time or anything else 64. A list holding one huge string many times weighs what
    it would print; the deadline is checked as it goes."""
    total = 0
    stack = [value]
    seen = 0
    while stack and total <= limit:
        item = stack.pop()
        seen += 1
        if not seen & 4095:
            _check_deadline()
        if isinstance(item, str | bytes):
            total += len(item) + 2
        elif isinstance(item, list | tuple):
            total += len(item) + 1
            stack.extend(item)
        elif isinstance(item, Mapping):
            total += 2 * len(item) + 1
            for key, member in item.items():
                stack.append(key)
                stack.append(member)
        elif item is None or isinstance(item, bool):
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() * 30103 // 100000 + 2  # its decimal digits, and a sign
        elif isinstance(item, float):
            total += 24
        else:
            total += 64
    return total


def _too_large(what: str) -> ExpressionError:
    return ExpressionError(f"{what} would be larger than the size limit ({MAX_OUTPUT} bytes)")


def _charge(size: int, what: str) -> None:
    """Count what an operation is about to build: no more than the size limit at once, and no
    more than MAX_BUILT in all in one evaluation (a list of many large values, each within the
    limit, is refused as it grows)."""
    if size > MAX_OUTPUT:
        raise _too_large(what)
    spent = _budget.get()
    if spent is not None:
        spent[0] += size
        if spent[0] > MAX_BUILT:
            raise ExpressionError(f"the expression would build more than {MAX_BUILT} bytes in all")


def _text_of(value: Any, what: str) -> str:
    """``str(value)``, weighed first: a list may hold one huge string many times and print as
    all of them."""
    if isinstance(value, str):
        return value
    if _weight(value) > MAX_OUTPUT:
        raise _too_large(what)
    return str(value)


def _concat(parts: Iterable[Any]) -> str:
    """Text made of parts (``a ~ b``, and a template's text and values), sized as it is
    joined: each part may be large, the text may not."""
    texts, size = [], 0
    for part in parts:
        text = _text_of(part, "the text")
        size += len(text)
        if size > MAX_OUTPUT:
            raise _too_large("the text")
        texts.append(text)
    _charge(size, "the text")
    return "".join(texts)


def _finalize(value: Any) -> Any:
    """What a template's ``{{ value }}`` prints, weighed before Jinja makes it text."""
    if not isinstance(value, str) and _weight(value) > MAX_OUTPUT:
        raise _too_large("the text")
    return value


# A printf-style conversion: %s, %(name)s, %-10.3f, %% (a key holds no parentheses: Python
# would read nested ones, and a format this does not read whole is refused).
_CONVERSION = re.compile(
    r"%(?:\(([^()]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])"
)
MAX_WIDTH = 100  # the widest field or precision a % format may ask for


def _format(text: str, values: Any) -> str:
    """``text % values`` (``'%.1f%%' % score``), sized first: every conversion read (one not
    understood is refused), no width or precision past MAX_WIDTH, and each charged what its
    own value may print."""
    conversions = []
    at = text.find("%")
    while at != -1:
        found = _CONVERSION.match(text, at)
        if found is None:
            raise ExpressionError(f"% format not understood at {text[at : at + 16]!r}")
        conversions.append(found.groups())
        at = text.find("%", found.end())
    positional = list(values) if isinstance(values, tuple) else [values]
    size, index = len(text), 0
    for key, width, precision, kind in conversions:
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_WIDTH):
                raise ExpressionError(f"% formats fields of at most {MAX_WIDTH} characters")
        if kind == "%":
            continue
        if key is not None:
            value = values.get(key) if isinstance(values, Mapping) else None
        else:
            value = positional[index] if index < len(positional) else None
            index += 1
        # A text by %s prints itself; other values, Python's text of them: up to twice what
        # they weigh (quotes, escapes).
        printed = len(value) if isinstance(value, str) and kind == "s" else 2 * _weight(value) + 32
        size += max(int(width or 0), printed) + int(precision or 0)
        if size > MAX_OUTPUT:
            raise _too_large("a % format")
    _charge(size, "a % format")
    return str(text % values)


class _Generator(CodeGenerator):
    """Jinja's code generator, with ``~`` going through :func:`_concat` (the environment's
    ``concat``, which also joins a template's output)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, narrowed further: method allow-list, sized operators."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _Generator
    concat = staticmethod(_concat)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if not callable(value):
            return True
        for kind, names in _SAFE_METHODS.items():
            if isinstance(obj, kind):
                return attr in names
        return False

    def getitem(self, obj: Any, argument: Any) -> Any:
        # A text has no keys: Jinja falls back to its attributes (s['replace']), which must be
        # checked as s.replace is.
        if isinstance(obj, str) and isinstance(argument, str):
            return self.getattr(obj, argument)
        return super().getitem(obj, argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Jinja hands out a sandboxed str.format, which still pads to any width it is told.
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            return self.unsafe_undefined(obj, attribute)
        if isinstance(obj, str) and attribute == "replace":
            return functools.partial(_replace, obj)
        if isinstance(obj, Undefined):  # a.b.c on a missing a: missing too
            return obj
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__} is unsafe")

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        _check_deadline()
        if operator_name == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(times, int) and isinstance(sequence, str | list | tuple):
                    # What each repetition adds: the weight but for the quotes or brackets.
                    each = _weight(sequence) - (2 if isinstance(sequence, str) else 1)
                    _charge(each * max(times, 0), "a repetition")
            return operator.mul(left, right)
        if operator_name == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _charge(_weight(left) + _weight(right), "a concatenation (+)")
            return operator.add(left, right)
        if operator_name == "%":
            if isinstance(left, str):  # printf-style formatting pads to any width it is told
                return _format(left, right)
            return operator.mod(left, right)
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and right * math.log2(abs(left)) > 4096
        ):
            raise ExpressionError("a power would exceed 4096 bits")
        return operator.pow(left, right)


class _Undefined(ChainableUndefined):
    """A missing name or key: ``a.b.c`` on a missing ``a`` is missing too, and reads as None."""

    __slots__ = ()


def _check_replace(text: str, old: str, new: str, count: Any) -> None:
    """Whether a replace's result fits: an empty ``old`` inserts ``new`` between every
    character."""
    if len(new) <= len(old):
        return
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _charge(len(text) + hits * (len(new) - len(old)), "a replace")


def _replace(text: str, old: Any, new: Any, count: Any = -1) -> str:
    """``str.replace`` for expressions, sized first."""
    old, new = str(old), str(new)
    _check_replace(text, old, new, count)
    return text.replace(old, new, count if isinstance(count, int) else -1)


# Filters that copy every element of what they are given (print it, or lower-case it to compare).
_COPYING = ("unique", "sort", "min", "max", "dictsort", "groupby")


def _sized_filters(filters: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Jinja's filters whose output an argument can make much larger than their input, each
    checking the size first (and keeping how Jinja calls it: with the context it asks for)."""
    replace, join, total = filters["replace"], filters["join"], filters["sum"]
    batch, slices = filters["batch"], filters["slice"]

    @functools.wraps(replace)
    def sized_replace(eval_ctx: Any, text: Any, old: Any, new: Any, count: Any = None) -> Any:
        text = _text_of(text, "a replace")
        _check_replace(text, _text_of(old, "a replace"), _text_of(new, "a replace"), count)
        return replace(eval_ctx, text, old, new, count)

    @functools.wraps(join)
    def sized_join(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
        items = list(value) if not isinstance(value, str) else value
        separator = len(str(d)) * max(len(items) - 1, 0)
        _charge(separator + _weight(items, MAX_OUTPUT), "a join")
        return join(eval_ctx, items, d, attribute)

    @functools.wraps(total)
    def sized_sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        if isinstance(start, int | float):  # numbers: Jinja's sum
            return total(environment, iterable, attribute, start)
        # Lists (or text) added one by one copy the growing result each time: n squared.
        items = list(iterable)
        if attribute is not None:
            items = list(map(make_attrgetter(environment, attribute), items))
        _charge(_weight(start) + sum(_weight(item) for item in items), "a sum")
        if isinstance(start, list | tuple) and all(isinstance(i, list | tuple) for i in items):
            return type(start)(itertools.chain(start, *items))
        return functools.reduce(operator.add, items, start)

    def counted(function: Callable[..., Any], what: str, name: str) -> Callable[..., Any]:
        """``function(value, count, fill_with=None)`` with ``count`` (how many lists to make,
        or how long each is, padded with ``fill_with``) at most MAX_ITEMS, and the padding
        within the size limit; positional after the context (when Jinja passes one), or by
        name."""
        place = 2 if getattr(function, "jinja_pass_arg", None) is not None else 1

        @functools.wraps(function)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            count = args[place] if len(args) > place else kwargs.get(name)
            fill = args[place + 1] if len(args) > place + 1 else kwargs.get("fill_with")
            if isinstance(count, int) and count > MAX_ITEMS:
                raise ExpressionError(f"{what} takes a count of at most {MAX_ITEMS}")
            if fill is not None and isinstance(count, int):
                _charge(count * _weight(fill), f"{what}'s padding")
            return function(*args, **kwargs)

        return bounded

    def weighed(function: Callable[..., Any], what: str, most: int) -> Callable[..., Any]:
        """``function(value, ...)`` only on a value that weighs at most ``most``: it copies
        (prints, escapes, or lower-cases to compare) every element, and a list may hold one
        huge text many times. What comes lazily (a generator) is listed first, to be weighed."""
        place = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

        @functools.wraps(function)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            if len(args) > place:
                value = args[place]
                if not isinstance(value, str | bytes | list | tuple | Mapping) and isinstance(
                    value, Iterable
                ):
                    value = list(value)
                    args = (*args[:place], value, *args[place + 1 :])
                weight = _weight(value, most)
                if weight > most:
                    raise ExpressionError(f"{what} takes at most {most} bytes of data")
                _charge(min(weight, MAX_OUTPUT), what)
            return function(*args, **kwargs)

        return bounded

    return {
        "replace": sized_replace,
        "join": sized_join,
        "sum": sized_sum,
        "batch": counted(batch, "batch", "linecount"),
        "slice": counted(slices, "slice", "slices"),
        # What prints: within the size limit (urlencode writes a byte as up to 12 characters,
        # one at a time); what compares or orders: within MAX_WORK.
        "string": weighed(filters["string"], "string", MAX_OUTPUT),
        "urlencode": weighed(filters["urlencode"], "urlencode", MAX_OUTPUT // 12),
        **{name: weighed(filters[name], name, MAX_WORK) for name in _COPYING},
    }


def _build_environment() -> _Sandbox:
    # Not optimized: Jinja's optimizer computes constant parts (filters included) while
    # compiling, where no deadline holds; a playbook is compiled by anyone who may validate it.
    env = _Sandbox(
        undefined=_Undefined, autoescape=False, cache_size=0, optimized=False, finalize=_finalize
    )
    kept: dict[str, Callable[..., Any]] = {name: env.filters[name] for name in _KEPT_FILTERS}
    kept.update(_sized_filters(kept))
    env.filters = {name: _guarded(function) for name, function in kept.items()}
    env.filters.update({name: _guarded(f) for name, f in FILTERS.items()})
    tests = cast(dict[str, Callable[..., Any]], env.tests)
    env.tests = {name: _guarded(test) for name, test in tests.items()}
    env.tests.update({name: _guarded(test) for name, test in TESTS.items()})
    env.globals = {name: _guarded(f) for name, f in FUNCTIONS.items()}
    return env


# -- security and time helpers offered to expressions -----------------------------------------

_OBSERVABLE_ALIASES = {
    "ipv4-addr": "ipv4",
    "ipv6-addr": "ipv6",
    "ip": "ipv4,ipv6",
    "domain-name": "domain",
    "email-addr": "email",
    "file:md5": "md5",
    "file:sha1": "sha1",
    "file:sha256": "sha256",
    "file:sha-256": "sha256",
    "file:name": "file_name",
    "hash": "md5,sha1,sha256",
    "user-account": "user",
}


def _observable_types(kinds: Iterable[str]) -> set[str]:
    wanted: set[str] = set()
    for kind in kinds:
        name = str(kind).strip().lower()
        wanted.update(_OBSERVABLE_ALIASES.get(name, name).split(","))
    return wanted


def of_type(observables: Any, *kinds: str) -> list[Any]:
    """The observables (``{"type", "value", …}``) of the given types (STIX names work too)."""
    wanted = _observable_types(kinds)
    return [
        item
        for item in _items(observables)
        if isinstance(item, Mapping) and str(item.get("type", "")).lower() in wanted
    ]


def _items(value: Any) -> list[Any]:
    if value is None or isinstance(value, Undefined):
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def refang(value: Any) -> Any:
    """``hxxp://evil[.]com`` -> ``http://evil.com`` (a list, or what ``map`` hands out: each
    element)."""
    if isinstance(value, list | tuple | Iterator):
        return [refang(item) for item in value]
    return _refang(str(value)) if value is not None else None


def defang(value: Any) -> Any:
    """``http://evil.com`` -> ``hxxp://evil[.]com`` (a list, or what ``map`` hands out: each
    element)."""
    if isinstance(value, list | tuple | Iterator):
        return [defang(item) for item in value]
    return _defang(str(value)) if value is not None else None


@functools.lru_cache(maxsize=1024)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return host_network(ipaddress.ip_network(cidr.strip(), strict=False))
    except ValueError:
        raise ExpressionError(f"{cidr!r} is not a CIDR network") from None


def _address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if isinstance(value, Mapping):
        value = value.get("value")
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None


def in_cidr(value: Any, *cidrs: str) -> bool:
    """Whether the address (or observable), or every address of the network, lies in any of
    the networks. An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is the IPv4 one it maps."""
    address = _address(value)
    if address is not None:
        host = host_address(address)
        return any(
            host.version == network.version and host in network
            for network in map(_network, _flatten_text(cidrs))
        )
    subject = _subnet(value)
    if subject is None:
        return False
    return any(
        subject.version == network.version and subject.subnet_of(network)  # type: ignore[arg-type]
        for network in map(_network, _flatten_text(cidrs))
    )


def _subnet(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if isinstance(value, Mapping):
        value = value.get("value")
    text = str(value).strip()
    if "/" not in text:
        return None
    try:
        return host_network(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


def _flatten_text(values: Iterable[Any]) -> list[str]:
    flat: list[str] = []
    for value in values:
        if isinstance(value, list | tuple):
            flat.extend(str(item) for item in value)
        else:
            flat.append(str(value))
    return flat


def is_private(value: Any) -> bool:
    """Whether the address is not globally routable (RFC 1918, loopback, link-local …)."""
    address = _address(value)
    return address is not None and not address.is_global


def is_ip(value: Any) -> bool:
    """Whether the value is an IPv4 or IPv6 address."""
    return _address(value) is not None


def ip_version(value: Any) -> int | None:
    """4 or 6, or None for something that is not an address."""
    address = _address(value)
    return None if address is None else address.version


def to_datetime(value: Any) -> datetime | None:
    """An aware datetime from ISO 8601 text, epoch seconds, or a datetime (naive means UTC)."""
    if value is None or isinstance(value, Undefined):
        return None
    if isinstance(value, datetime):
        found = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        found = datetime.fromtimestamp(value, UTC)
    else:
        text = str(value).strip()
        try:
            found = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            raise ExpressionError(f"{text[:64]!r} is not an ISO 8601 time") from None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def duration(value: Any) -> timedelta:
    """``duration('24h')``: a span to add to or subtract from a time."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    try:
        return parse_duration(str(value))
    except InvalidInput as exc:
        raise ExpressionError(exc.message) from None


def iso(value: Any) -> str | None:
    """ISO 8601 text (UTC, ``Z``) for a time; a span as seconds."""
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    found = to_datetime(value)
    if found is None:
        return None
    return found.astimezone(UTC).isoformat().replace("+00:00", "Z")


def timestamp(value: Any) -> float | None:
    """Seconds since the epoch."""
    found = to_datetime(value)
    return None if found is None else found.timestamp()


def severity(label: Any) -> int:
    """The OCSF severity_id of a label (``'high'`` -> 4) or of a number."""
    if isinstance(label, int) and not isinstance(label, bool):
        return label
    name = str(label).strip().lower()
    aliases = {"info": "informational", "crit": "critical", "med": "medium"}
    name = aliases.get(name, name)
    for member in Severity:
        if member.label.lower() == name:
            return int(member)
    raise ExpressionError(f"{label!r} is not a severity; use informational to fatal")


def to_json(value: Any) -> str:
    """The value as compact JSON text."""
    _charge(_weight(value), "to_json")
    return orjson.dumps(_plain(value), default=str).decode()


def from_json(text: Any) -> Any:
    """Parse JSON text."""
    try:
        return orjson.loads(str(text))
    except orjson.JSONDecodeError as exc:
        raise ExpressionError(f"from_json: not JSON ({exc})") from None


def _now() -> datetime:
    return _clock_now.get()()


_clock_now: contextvars.ContextVar[Callable[[], datetime]] = contextvars.ContextVar(
    "quell_expr_now", default=lambda: datetime.now(UTC)
)


def ago(value: Any) -> datetime:
    """``ago('1h')``: now minus the span."""
    return _now() - duration(value)


def age(value: Any) -> float | None:
    """Seconds from the time to now."""
    found = to_datetime(value)
    return None if found is None else (_now() - found).total_seconds()


FILTERS: dict[str, Callable[..., Any]] = {
    "of_type": of_type,
    "refang": refang,
    "defang": defang,
    "in_cidr": in_cidr,
    "ip_version": ip_version,
    "to_datetime": to_datetime,
    "duration": duration,
    "iso": iso,
    "timestamp": timestamp,
    "age": age,
    "severity": severity,
    "to_json": to_json,
    "from_json": from_json,
}
TESTS: dict[str, Callable[..., bool]] = {
    "in_cidr": in_cidr,
    "private_ip": is_private,
    "ip": is_ip,
}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "now": _now,
    "duration": duration,
    "ago": ago,
    "severity": severity,
    "to_datetime": to_datetime,
    # What imported CACAO conditions and out_args call (quell.playbooks.cacao): comparisons
    # with CACAO's coercions, LIKE and MATCHES, and a variable's value from a step's result.
    **CONDITION_FUNCTIONS,
    "cacao_result": cacao_result,
    "cacao_text": cacao_text,
}

# The names an expression may use besides the run's data.
# Names the engine puts in every scope besides the variables: callback_url(step_id).
ENGINE_NAMES = frozenset({"callback_url"})
BUILTIN_NAMES = (
    frozenset(FUNCTIONS) | ENGINE_NAMES | {"true", "false", "none", "True", "False", "None"}
)

_ENV = _build_environment()


# -- compiled expressions and templates --------------------------------------------------------


def _plain(value: Any) -> Any:
    """The value as data a run can keep: Jinja's Undefined as None, a span of time as its
    text (``1h30m``, which ``duration`` reads back), a set as a sorted list, and what a filter
    hands out one by one (``map``, ``select``) as a list; recursively through containers."""
    if isinstance(value, Undefined):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, timedelta):
        return _span_text(value)
    if isinstance(value, set | frozenset):
        return [_plain(item) for item in sorted(value, key=str)]
    if isinstance(value, Iterator):
        return [_plain(item) for item in value]
    return value


def _span_text(value: timedelta) -> str:
    return format_duration(value) if value >= timedelta(0) else "-" + format_duration(-value)


_JSON_SCALARS = (int, float, bool, type(None), datetime, date)


def _check_size(value: Any, where: str) -> Any:
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, dict | list):
        # The weight first: what holds one huge value many times is refused before printing.
        size = _weight(value)
        if size <= MAX_OUTPUT:
            try:  # no default: what JSON cannot hold is refused here, not when it is stored
                size = len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
            except orjson.JSONEncodeError as exc:  # nested deeper than JSON goes, say
                raise ExpressionError(
                    f"{where}: the result is not JSON ({exc})", field=where
                ) from None
    elif isinstance(value, _JSON_SCALARS):
        return value
    else:
        raise ExpressionError(
            f"{where}: the result is a {type(value).__name__}, which is not a JSON value",
            field=where,
        )
    if size > MAX_OUTPUT:
        raise ExpressionError(f"{where}: the result is larger than {MAX_OUTPUT} bytes", field=where)
    return value


@dataclass(frozen=True)
class Expression:
    """A compiled expression: :meth:`evaluate` it against a scope of names."""

    source: str
    where: str
    names: frozenset[str]  # the top-level names it reads
    steps: frozenset[str]  # the step ids it reads through ``steps.<id>``
    _function: Callable[[Mapping[str, Any]], Any]
    path: tuple[str, ...] | None = None  # set when the expression is a plain key path
    literal: bool = False  # a dict or list literal of constants and key paths

    def evaluate(
        self, scope: Mapping[str, Any], *, now: Callable[[], datetime] | None = None
    ) -> Any:
        """The expression's value in ``scope``; ExpressionError on failure."""
        if self.path is not None:  # a plain lookup: no call, no deadline, no new data
            return _walk(self.path, scope)
        if self.literal:  # built from the scope: no call, no deadline; new data, so sized
            return _check_size(self._function(scope), self.where)
        token = _deadline.set(time.monotonic() + DEADLINE)
        spent = _budget.set([0])
        clock = _clock_now.set(now) if now is not None else None
        try:
            value = _plain(self._function(scope))
        except ExpressionError as exc:
            raise ExpressionError(f"{self.where}: {exc.message}", field=self.where) from None
        except RecursionError:  # data nested deeper than Python's stack
            raise _nesting(self.where) from None
        except MemoryError:  # what no size check foresaw: this evaluation, not the process
            raise ExpressionError(f"{self.where}: ran out of memory", field=self.where) from None
        except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            raise ExpressionError(
                f"{self.where}: {type(exc).__name__}: {str(exc)[:200]}", field=self.where
            ) from None
        except (LookupError, AttributeError) as exc:
            raise ExpressionError(
                f"{self.where}: {type(exc).__name__}: {str(exc)[:200]}", field=self.where
            ) from None
        finally:
            _deadline.reset(token)
            _budget.reset(spent)
            if clock is not None:
                _clock_now.reset(clock)
        return _check_size(value, self.where)

    def truthy(
        self, scope: Mapping[str, Any], *, now: Callable[[], datetime] | None = None
    ) -> bool:
        """The expression's value as a condition."""
        return bool(self.evaluate(scope, now=now))


def _references(tree: nodes.Node) -> tuple[frozenset[str], frozenset[str]]:
    names = {node.name for node in tree.find_all(nodes.Name) if node.ctx == "load"}
    steps: set[str] = set()
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "steps":
            steps.add(node.attr)
    for item in tree.find_all(nodes.Getitem):
        if (
            isinstance(item.node, nodes.Name)
            and item.node.name == "steps"
            and isinstance(item.arg, nodes.Const)
            and isinstance(item.arg.value, str)
        ):
            steps.add(item.arg.value)
    return frozenset(names - BUILTIN_NAMES), frozenset(steps)


def _check_callables(tree: nodes.Node, where: str) -> None:
    """Unknown filters and tests are errors now, not when a branch first reaches them."""
    for node in tree.find_all(nodes.Filter):
        if node.name not in _ENV.filters:
            hint = f" (it is a test: `value is {node.name}`)" if node.name in _ENV.tests else ""
            raise ExpressionError(f"{where}: no filter named {node.name!r}{hint}", field=where)
    for test in tree.find_all(nodes.Test):
        if test.name not in _ENV.tests:
            hint = f" (it is a filter: `value | {test.name}`)" if test.name in _ENV.filters else ""
            raise ExpressionError(f"{where}: no test named {test.name!r}{hint}", field=where)


def _syntax(where: str, exc: TemplateSyntaxError) -> ExpressionError:
    return ExpressionError(f"{where}: {exc.message or 'syntax error'}", field=where)


def _nesting(where: str) -> ExpressionError:
    return ExpressionError(f"{where}: nested too deeply", field=where)


def compile_expression(source: str, where: str = "expression") -> Expression:
    """Compile a bare expression (``a.b > 3 and c``); ``{{ … }}`` around it is accepted too."""
    try:
        return _compile_expression(source, where)
    except RecursionError:  # Jinja's parser and Python's compiler recurse per level
        raise _nesting(where) from None


@functools.lru_cache(maxsize=8192)
def _compile_expression(source: str, where: str) -> Expression:
    text = source.strip()
    if text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1:
        text = text[2:-2].strip()
    if not text:
        raise ExpressionError(f"{where}: the expression is empty", field=where)
    if len(text) > MAX_SOURCE:
        raise ExpressionError(f"{where}: longer than {MAX_SOURCE} characters", field=where)
    try:
        parser_tree = _ENV.parse("{{ " + text + " }}")
        compiled = _ENV.compile_expression(text, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise _syntax(where, exc) from None
    _check_callables(parser_tree, where)
    names, steps = _references(parser_tree)
    path = _simple_path(text)
    function: Callable[[Mapping[str, Any]], Any] | None = None
    if path is not None:
        function = functools.partial(_walk, path)
    else:
        function = _literal(_only_expression(parser_tree))
    if function is not None:
        return Expression(source, where, names, steps, function, path, literal=path is None)

    def jinja(scope: Mapping[str, Any]) -> Any:
        return compiled(**scope)

    return Expression(source, where, names, steps, jinja)


_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Names Jinja would resolve to a method of a dict (or a constant): left to Jinja.
_NOT_KEYS = frozenset(dir(dict)) | {"true", "false", "none", "True", "False", "None"}


def _simple_path(text: str) -> tuple[str, ...] | None:
    """``a.b.c`` as its parts, when Jinja would do nothing but look the keys up."""
    if not _PATH.match(text):
        return None
    parts = tuple(text.split("."))
    if parts[0] in FUNCTIONS or any(part in _NOT_KEYS for part in parts):
        return None
    return parts


def _only_expression(tree: nodes.Template) -> nodes.Expr | None:
    """The expression of a parsed ``{{ expression }}``."""
    if len(tree.body) == 1 and isinstance(tree.body[0], nodes.Output):
        parts = tree.body[0].nodes
        if len(parts) == 1 and not isinstance(parts[0], nodes.TemplateData):
            return parts[0]
    return None


def _node_path(node: nodes.Expr) -> tuple[str, ...] | None:
    """``a.b.c`` (names and attributes only) as its parts, when it is a plain key path."""
    parts: list[str] = []
    while isinstance(node, nodes.Getattr):
        parts.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    return _simple_path(".".join([node.name, *reversed(parts)]))


def _literal(node: nodes.Expr | None) -> Callable[[Mapping[str, Any]], Any] | None:
    """A builder for a literal made of constants, key paths, dicts and lists (``{'ip': src,
    'hits': [a.b, 1]}``): its value straight from the scope, as Jinja would compute it, without
    a template context per call. None for anything else (Jinja evaluates it)."""
    if isinstance(node, nodes.Const):
        value = node.value
        if value is None or isinstance(value, str | int | float | bool):
            return lambda _scope: value
        return None
    if isinstance(node, nodes.Name | nodes.Getattr):
        path = _node_path(node)
        return None if path is None else functools.partial(_walk, path)
    if isinstance(node, nodes.Dict):
        pairs: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = []
        for pair in node.items:
            build = _literal(pair.value)
            if not (isinstance(pair.key, nodes.Const) and isinstance(pair.key.value, str)):
                return None
            if build is None:
                return None
            pairs.append((pair.key.value, build))
        return lambda scope: {key: build(scope) for key, build in pairs}
    if isinstance(node, nodes.List | nodes.Tuple):
        items = [_literal(item) for item in node.items]
        if any(build is None for build in items):
            return None
        builders = cast(list[Callable[[Mapping[str, Any]], Any]], items)
        return lambda scope: [build(scope) for build in builders]
    return None


def _walk(path: tuple[str, ...], scope: Mapping[str, Any]) -> Any:
    """The value at ``path`` in ``scope`` (None when any part is missing), as Jinja finds it
    for plain data, without building a template context: most playbook expressions are
    such paths (``alert.src.ip``, ``steps.lookup.output.verdict``)."""
    value: Any = scope.get(path[0])
    for part in path[1:]:
        if type(value) is not dict and not isinstance(value, Mapping):  # dict: the common case
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True)
class Template:
    """A value that may hold ``{{ … }}``: :meth:`render` gives the value in a scope."""

    source: str
    where: str
    names: frozenset[str]
    steps: frozenset[str]
    _expression: Expression | None  # a single ``{{ expr }}``: its value keeps its type
    _template: Any  # mixed text: a Jinja template rendering a string

    def render(self, scope: Mapping[str, Any], *, now: Callable[[], datetime] | None = None) -> Any:
        """The value in ``scope``: the expression's own value, or the rendered text."""
        if self._expression is not None:
            return self._expression.evaluate(scope, now=now)
        token = _deadline.set(time.monotonic() + DEADLINE)
        spent = _budget.set([0])
        clock = _clock_now.set(now) if now is not None else None
        try:
            text = self._template.render(**scope)
        except ExpressionError as exc:
            raise ExpressionError(f"{self.where}: {exc.message}", field=self.where) from None
        except RecursionError:  # data nested deeper than Python's stack
            raise _nesting(self.where) from None
        except MemoryError:  # what no size check foresaw: this evaluation, not the process
            raise ExpressionError(f"{self.where}: ran out of memory", field=self.where) from None
        except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            raise ExpressionError(
                f"{self.where}: {type(exc).__name__}: {str(exc)[:200]}", field=self.where
            ) from None
        finally:
            _deadline.reset(token)
            _budget.reset(spent)
            if clock is not None:
                _clock_now.reset(clock)
        return _check_size(text, self.where)


def is_template(value: Any) -> bool:
    """Whether ``value`` is text holding an expression to fill in."""
    return isinstance(value, str) and "{{" in value


def compile_template(source: str, where: str = "value") -> Template:
    """Compile text with ``{{ … }}`` parts; statements (``{% … %}``) are refused."""
    try:
        return _compile_template(source, where)
    except RecursionError:
        raise _nesting(where) from None


@functools.lru_cache(maxsize=8192)
def _compile_template(source: str, where: str) -> Template:
    if len(source) > MAX_SOURCE:
        raise ExpressionError(f"{where}: longer than {MAX_SOURCE} characters", field=where)
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise _syntax(where, exc) from None
    body = tree.body
    if any(not isinstance(node, nodes.Output) for node in body):
        raise ExpressionError(
            f"{where}: only {{{{ expressions }}}} are allowed, not {{% statements %}}", field=where
        )
    _check_callables(tree, where)
    names, steps = _references(tree)
    stripped = source.strip()
    if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
        expression = compile_expression(stripped[2:-2], where)
        return Template(source, where, names, steps, expression, None)
    try:
        template = _ENV.from_string(source)
    except TemplateSyntaxError as exc:
        raise _syntax(where, exc) from None
    return Template(source, where, names, steps, None, template)


def compile_value(value: Any, where: str) -> Any:
    """``value`` with every templated string inside it compiled (lists and mappings walked)."""
    if is_template(value):
        return compile_template(value, where)
    if isinstance(value, Mapping):
        return {key: compile_value(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [compile_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def render_value(
    value: Any, scope: Mapping[str, Any], *, now: Callable[[], datetime] | None = None
) -> Any:
    """A compiled value (see :func:`compile_value`) filled in from ``scope``."""
    kind = type(value)
    if kind is Template:
        return value.render(scope, now=now)
    if kind is dict or isinstance(value, dict):
        return {key: render_value(item, scope, now=now) for key, item in value.items()}
    if kind is list or isinstance(value, list):
        return [render_value(item, scope, now=now) for item in value]
    if isinstance(value, Template):
        return value.render(scope, now=now)
    return value


def value_references(value: Any) -> tuple[frozenset[str], frozenset[str]]:
    """The names and step ids a compiled value reads."""
    if isinstance(value, Template | Expression):
        return value.names, value.steps
    names: set[str] = set()
    steps: set[str] = set()
    children: Iterable[Any] = ()
    if isinstance(value, dict):
        children = value.values()
    elif isinstance(value, list):
        children = value
    for child in children:
        more_names, more_steps = value_references(child)
        names |= more_names
        steps |= more_steps
    return frozenset(names), frozenset(steps)


__all__ = [
    "BUILTIN_NAMES",
    "DEADLINE",
    "MAX_OUTPUT",
    "Expression",
    "ExpressionError",
    "Template",
    "compile_expression",
    "compile_template",
    "compile_value",
    "is_template",
    "render_value",
    "value_references",
]
