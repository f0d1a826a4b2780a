"""OpenC2 Language Specification 1.0 with the SLPF profile 1.0, as pydantic models.

A command is checked against the *combined* vocabulary of the language and the SLPF profile
(the profile adds the target ``slpf:rule_number``, the args ``slpf.*``, the actuator ``slpf``
and the result ``slpf.rule_number``): unknown properties, unknown targets, extension args of
other profiles and actuators of other profiles are refused, as the combined JSON schema
(``oc2slpf-v1.0.1``) refuses them. Beyond the schema, the values are checked for what they
mean: an IPv4 address has four octets of 0-255 and a prefix of 0-32, a hash has the right
number of hex digits, a URI has a scheme, a host name is made of valid labels, and at most two
of ``start_time``, ``stop_time`` and ``duration`` are given.

:func:`parse_command` and :func:`parse_response` raise :class:`InvalidMessage`, whose text
names the JSON path of the first problem, e.g. ``target.ipv4_net: '10.0.0.300/8' is not an
IPv4 network: ...``.

Where the checks differ from the schema (on messages outside the shared test corpus, on which
the two agree): IPv4 octets with leading zeros (``010.0.0.1``, ambiguous: octal or decimal?)
and IPv6 zone identifiers (``fe80::1%eth0``, meaningless in a filter rule) are refused; hashes
must be hex of their algorithm's length; commands with all three of start_time, stop_time and
duration, or a stop_time before the start_time, are refused (the language specification
forbids them; the schema cannot say it). Responses are read more liberally than the SLPF schema
reads them (see :class:`Response`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, get_args

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from quell.codec import json_type

LANGUAGE_VERSION = "1.0"
PROFILE = "slpf"

Action = Literal[
    "scan", "locate", "query", "deny", "contain", "allow", "start", "stop", "restart", "cancel",
    "set", "update", "redirect", "create", "delete", "detonate", "restore", "copy",
    "investigate", "remediate",
]  # fmt: skip
ACTIONS: tuple[str, ...] = get_args(Action)

TARGET_TYPES: tuple[str, ...] = (
    "artifact", "command", "device", "domain_name", "email_addr", "features", "file",
    "idn_domain_name", "idn_email_addr", "ipv4_net", "ipv6_net", "ipv4_connection",
    "ipv6_connection", "iri", "mac_addr", "process", "properties", "uri", "slpf:rule_number",
)  # fmt: skip

Feature = Literal["versions", "profiles", "pairs", "rate_limit"]
FEATURES: tuple[str, ...] = get_args(Feature)
ResponseType = Literal["none", "ack", "status", "complete"]
L4Protocol = Literal["icmp", "tcp", "udp", "sctp"]
StatusCode = Literal[102, 200, 400, 401, 403, 404, 500, 501, 503]
STATUS_CODES: tuple[int, ...] = get_args(StatusCode)

# The action-target pairs the SLPF profile defines (its Action-Targets type).
SLPF_PAIRS: dict[str, tuple[str, ...]] = {
    "query": ("features",),
    "deny": ("ipv4_net", "ipv6_net", "ipv4_connection", "ipv6_connection"),
    "allow": ("ipv4_net", "ipv6_net", "ipv4_connection", "ipv6_connection"),
    "update": ("file",),
    "delete": ("slpf:rule_number",),
}

_NAMESPACED = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,15}:[A-Za-z][A-Za-z0-9_]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9A-Fa-f]{2}(([:-][0-9A-Fa-f]{2}){2})?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_URI_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*$")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")

T = TypeVar("T")


class InvalidMessage(ValueError):
    """An OpenC2 message that is not valid; ``path`` is the JSON path of the problem."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.message = f"{path}: {reason}"


# -- value checks -----------------------------------------------------------------------------


def _fail(reason: str) -> PydanticCustomError:
    # The reason is passed as context so that braces in a value are never read as a template.
    return PydanticCustomError("openc2", "{reason}", {"reason": reason})


def show(value: Any, limit: int = 80) -> str:
    """A value as a message quotes it: strings in single quotes, the rest as JSON."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _integer(value: Any) -> Any:
    """A JSON integer: an int, or a float with no fraction (``500.0``); never a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"expected an integer, got {json_type(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise _fail(f"expected an integer, got {show(value)}")
        return int(value)
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise _fail(f"{value} is negative; it must be 0 or more")
    return value


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise _fail(f"{value} is not a port number (0-65535)")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"expected a number, got {json_type(value)}")
    return value


def _prefix(text: str, maximum: int, what: str, value: str) -> None:
    if not _DECIMAL.match(text) or int(text) > maximum:
        raise _fail(
            f"{show(value)} is not an {what} network: the prefix length must be 0-{maximum}"
        )


def _ipv4_net(value: str) -> str:
    address, slash, prefix = value.partition("/")
    try:
        ipaddress.IPv4Address(address)
    except ValueError as exc:
        raise _fail(f"{show(value)} is not an IPv4 network: {exc}") from None
    if slash:
        _prefix(prefix, 32, "IPv4", value)
    return value


def _ipv6_net(value: str) -> str:
    address, slash, prefix = value.partition("/")
    if "%" in address:
        raise _fail(f"{show(value)} is not an IPv6 network: a zone identifier is not allowed")
    try:
        ipaddress.IPv6Address(address)
    except ValueError as exc:
        raise _fail(f"{show(value)} is not an IPv6 network: {exc}") from None
    if slash:
        _prefix(prefix, 128, "IPv6", value)
    return value


def _is_hostname(value: str) -> bool:
    name = value[:-1] if value.endswith(".") else value
    return (
        0 < len(name) <= 253
        and name.isascii()
        and all(_HOST_LABEL.match(label) for label in name.split("."))
    )


def _hostname(value: str) -> str:
    if not _is_hostname(value):
        raise _fail(f"{show(value)} is not a host name (RFC 1123)")
    return value


def _idn_hostname(value: str) -> str:
    try:
        ascii_name = value.encode("idna").decode("ascii")
    except UnicodeError:
        raise _fail(f"{show(value)} is not an internationalized host name") from None
    if not _is_hostname(ascii_name):
        raise _fail(f"{show(value)} is not an internationalized host name")
    return value


def _email(international: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        local, at, domain = value.rpartition("@")
        valid_local = (
            bool(at)
            and 0 < len(local) <= 64
            and not any(c.isspace() or ord(c) < 32 for c in local)
            and (international or local.isascii())
        )
        try:
            valid_domain = (_idn_hostname if international else _hostname)(domain) == domain
        except PydanticCustomError:
            valid_domain = False
        if not (valid_local and valid_domain):
            kind = "an internationalized e-mail address" if international else "an e-mail address"
            raise _fail(f"{show(value)} is not {kind}")
        return value

    return check


def _uri(international: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        ascii_form = "".join(c if c.isascii() else "a" for c in value) if international else value
        if (
            not _SCHEME.match(value)
            or not _URI_CHARS.match(ascii_form)
            or _PERCENT.search(value)
            or (international and any(c.isspace() or ord(c) < 32 for c in value))
        ):
            kind = "an IRI" if international else "a URI"
            raise _fail(f"{show(value)} is not {kind} (RFC {3987 if international else 3986})")
        return value

    return check


def _hex(length: int, algorithm: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) != length or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise _fail(f"{show(value)} is not an {algorithm} hash ({length} hex digits)")
        return value

    return check


def _mac(value: str) -> str:
    if not _MAC.match(value):
        raise _fail(f"{show(value)} is not a MAC address (EUI-48 or EUI-64)")
    return value


def _binary(value: str) -> str:
    padded = value + "=" * (-len(value) % 4)
    try:
        if "-" in value or "_" in value:
            base64.urlsafe_b64decode(padded.encode("ascii"))
        else:
            base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _fail(f"{show(value)} is not base64") from None
    return value


def _unique(items: list[T]) -> list[T]:
    seen: list[T] = []
    for item in items:
        if item in seen:
            raise _fail(f"{show(item)} is listed more than once; the items must be unique")
        seen.append(item)
    return items


def _pair_target(value: str) -> str:
    if value not in TARGET_TYPES and not _NAMESPACED.match(value):
        raise _fail(f"{show(value)} is not a target type")
    return value


Integer = Annotated[int, BeforeValidator(_integer)]
NonNegative = Annotated[int, BeforeValidator(_integer), AfterValidator(_non_negative)]
Port = Annotated[int, BeforeValidator(_integer), AfterValidator(_port)]
Number = Annotated[float, BeforeValidator(_number), Field(strict=False)]
IPv4Net = Annotated[str, AfterValidator(_ipv4_net)]
IPv6Net = Annotated[str, AfterValidator(_ipv6_net)]
Hostname = Annotated[str, AfterValidator(_hostname)]
IdnHostname = Annotated[str, AfterValidator(_idn_hostname)]
EmailAddr = Annotated[str, AfterValidator(_email(international=False))]
IdnEmailAddr = Annotated[str, AfterValidator(_email(international=True))]
URI = Annotated[str, AfterValidator(_uri(international=False))]
IRI = Annotated[str, AfterValidator(_uri(international=True))]
MacAddr = Annotated[str, AfterValidator(_mac)]
Binary = Annotated[str, AfterValidator(_binary)]
Features = Annotated[list[Feature], Field(max_length=10), AfterValidator(_unique)]
Properties = Annotated[list[str], Field(min_length=1), AfterValidator(_unique)]
Version = str
Nsid = Annotated[str, Field(min_length=1, max_length=64)]


# -- models ----------------------------------------------------------------------------------


class OpenC2Model(BaseModel):
    """Base of OpenC2 types: JSON types as they are (no coercion), no unknown property, no
    explicit null, and the type's cardinality: a ``record`` may be empty, a ``map`` needs at
    least one property, a ``choice`` exactly one."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    openc2_shape: ClassVar[Literal["record", "map", "choice"]] = "record"
    openc2_noun: ClassVar[str] = "property"  # what its properties are, for messages

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise _fail("null is not allowed; leave the property out instead")
        return value

    @model_validator(mode="after")
    def _cardinality(self) -> Self:
        given = self.present()
        if self.openc2_shape == "map" and not given:
            raise _fail(f"at least one {self.openc2_noun} is required")
        if self.openc2_shape == "choice" and len(given) != 1:
            if not given:
                raise _fail(f"exactly one {self.openc2_noun} is required, got none")
            names = ", ".join(repr(name) for name in given)
            raise _fail(f"exactly one {self.openc2_noun} is allowed, got {names}")
        return self

    def present(self) -> list[str]:
        """The properties given, by their JSON names, in the order of the type."""
        fields = type(self).model_fields
        return [
            info.alias or name for name, info in fields.items() if name in self.model_fields_set
        ]

    def to_json(self) -> dict[str, Any]:
        """As JSON data, with only the properties given."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return data


class Hashes(OpenC2Model):
    """Cryptographic hashes of a file or payload."""

    openc2_shape = "map"
    openc2_noun = "hash algorithm"

    md5: Annotated[str, AfterValidator(_hex(32, "MD5"))] | None = None
    sha1: Annotated[str, AfterValidator(_hex(40, "SHA-1"))] | None = None
    sha256: Annotated[str, AfterValidator(_hex(64, "SHA-256"))] | None = None


class Payload(OpenC2Model):
    """An artifact's content, inline or by URL."""

    openc2_shape = "choice"
    openc2_noun = "payload kind"

    bin: Binary | None = None
    url: URI | None = None


class Artifact(OpenC2Model):
    """A file-like object."""

    openc2_shape = "map"

    mime_type: str | None = None
    payload: Payload | None = None
    hashes: Hashes | None = None


class Device(OpenC2Model):
    """A hardware device."""

    openc2_shape = "map"

    hostname: Hostname | None = None
    idn_hostname: IdnHostname | None = None
    device_id: str | None = None


class File(OpenC2Model):
    """A file."""

    openc2_shape = "map"

    name: str | None = None
    path: str | None = None
    hashes: Hashes | None = None


class IPv4Connection(OpenC2Model):
    """An IPv4 5-tuple; any part may be left out, but not all."""

    openc2_shape = "map"

    src_addr: IPv4Net | None = None
    src_port: Port | None = None
    dst_addr: IPv4Net | None = None
    dst_port: Port | None = None
    protocol: L4Protocol | None = None


class IPv6Connection(OpenC2Model):
    """An IPv6 5-tuple; any part may be left out, but not all."""

    openc2_shape = "map"

    src_addr: IPv6Net | None = None
    src_port: Port | None = None
    dst_addr: IPv6Net | None = None
    dst_port: Port | None = None
    protocol: L4Protocol | None = None


class Process(OpenC2Model):
    """A running program."""

    openc2_shape = "map"

    pid: NonNegative | None = None
    name: str | None = None
    cwd: str | None = None
    executable: File | None = None
    parent: Process | None = None
    command_line: str | None = None


class Target(OpenC2Model):
    """What the action is performed on: exactly one target type."""

    openc2_shape = "choice"
    openc2_noun = "target type"

    artifact: Artifact | None = None
    command: str | None = None
    device: Device | None = None
    domain_name: Hostname | None = None
    email_addr: EmailAddr | None = None
    features: Features | None = None
    file: File | None = None
    idn_domain_name: IdnHostname | None = None
    idn_email_addr: IdnEmailAddr | None = None
    ipv4_net: IPv4Net | None = None
    ipv6_net: IPv6Net | None = None
    ipv4_connection: IPv4Connection | None = None
    ipv6_connection: IPv6Connection | None = None
    iri: IRI | None = None
    mac_addr: MacAddr | None = None
    process: Process | None = None
    properties: Properties | None = None
    uri: URI | None = None
    rule_number: Integer | None = Field(None, alias="slpf:rule_number")

    @property
    def kind(self) -> str:
        """The target type given, e.g. ``ipv4_net`` or ``slpf:rule_number``."""
        return self.present()[0]

    @property
    def value(self) -> Any:
        """The target's value as JSON data."""
        return self.to_json()[self.kind]


class SlpfArgs(OpenC2Model):
    """The SLPF profile's command arguments."""

    openc2_shape = "map"
    openc2_noun = "SLPF argument"

    drop_process: Literal["none", "reject", "false_ack"] | None = None
    persistent: bool | None = None
    direction: Literal["both", "ingress", "egress"] | None = None
    insert_rule: Integer | None = None


class Args(OpenC2Model):
    """How the command is carried out."""

    openc2_shape = "map"
    openc2_noun = "argument"

    start_time: NonNegative | None = None
    stop_time: NonNegative | None = None
    duration: NonNegative | None = None
    response_requested: ResponseType | None = None
    slpf: SlpfArgs | None = None

    @model_validator(mode="after")
    def _timing(self) -> Self:
        given = [n for n in ("start_time", "stop_time", "duration") if n in self.model_fields_set]
        if len(given) == 3:
            raise _fail(
                "start_time, stop_time and duration are all given; give at most two of them "
                "(the third follows from stop_time = start_time + duration)"
            )
        if (
            self.start_time is not None
            and self.stop_time is not None
            and self.stop_time < self.start_time
        ):
            raise _fail(f"stop_time {self.stop_time} is before start_time {self.start_time}")
        return self


class SlpfActuator(OpenC2Model):
    """Which SLPF actuator: all specifiers are optional (``{}`` means any)."""

    hostname: str | None = None
    named_group: str | None = None
    asset_id: str | None = None
    asset_tuple: Annotated[list[str], Field(min_length=1, max_length=10)] | None = None


class Actuator(OpenC2Model):
    """Who carries the command out: exactly one profile's specifiers."""

    openc2_shape = "choice"
    openc2_noun = "actuator profile"

    slpf: SlpfActuator | None = None


class Command(OpenC2Model):
    """An OpenC2 command."""

    action: Action
    target: Target
    args: Args | None = None
    actuator: Actuator | None = None
    command_id: str | None = None

    @property
    def response_requested(self) -> str:
        """What response the producer wants (``complete`` unless it said otherwise)."""
        if self.args is not None and self.args.response_requested is not None:
            return self.args.response_requested
        return "complete"


class SlpfResults(OpenC2Model):
    """The SLPF profile's results."""

    rule_number: Integer | None = None


class Results(OpenC2Model):
    """What a command produced."""

    openc2_shape = "map"
    openc2_noun = "result"

    versions: Annotated[list[Version], Field(min_length=1), AfterValidator(_unique)] | None = None
    profiles: list[Nsid] | None = None
    pairs: (
        Annotated[
            dict[
                Action,
                Annotated[
                    list[Annotated[str, AfterValidator(_pair_target)]],
                    Field(min_length=1, max_length=100),
                    AfterValidator(_unique),
                ],
            ],
            Field(min_length=1),
        ]
        | None
    ) = None
    rate_limit: Number | None = None
    slpf: SlpfResults | None = None


class Response(OpenC2Model):
    """An OpenC2 response.

    Read as the language specification reads it, with the SLPF results, and more liberally
    than the SLPF schema: ``pairs`` may name any action and target (a consumer may implement
    more than SLPF), and a profile name may be longer than the schema's 16 characters (the
    SLPF specification's own example lists ``iot-front-door-lock``).
    """

    status: Annotated[StatusCode, BeforeValidator(_integer)]
    status_text: str | None = None
    results: Results | None = None


Process.model_rebuild()


# -- checking --------------------------------------------------------------------------------


def json_path(loc: Sequence[int | str], root: str) -> str:
    """``("target", "features", 0)`` as ``target.features[0]``; odd keys in brackets."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{orjson.dumps(part).decode()}]"
    return text or root


_NOUNS: dict[str, str] = {
    "target": "target type",
    "args": "argument",
    "slpf": "SLPF property",
    "actuator": "actuator profile",
    "hashes": "hash algorithm",
    "payload": "payload kind",
    "results": "result",
}
_TYPE_NAMES: dict[str, str] = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "float_type": "a number",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _explain(error: ErrorDetails, root: str) -> InvalidMessage:
    loc = [part for part in error["loc"] if part != "[key]"]
    is_key = bool(error["loc"]) and error["loc"][-1] == "[key]"
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = loc[:-1]
        last = parent[-1] if parent else None
        noun = _NOUNS.get(last, "property") if isinstance(last, str) else "property"
        if not parent:
            noun = "property"
        return InvalidMessage(json_path(parent, root), f"unknown {noun} {show(loc[-1])}")
    path = json_path(loc, root)
    if kind == "missing":
        return InvalidMessage(path, "required property is missing")
    if kind == "openc2":
        return InvalidMessage(path, str(ctx.get("reason", error["msg"])))
    if kind == "literal_error":
        what = "key" if is_key else "value"
        return InvalidMessage(
            path, f"{show(value)} is not a valid {what}; expected {ctx.get('expected', '?')}"
        )
    if kind in _TYPE_NAMES:
        return InvalidMessage(path, f"expected {_TYPE_NAMES[kind]}, got {json_type(value)}")
    if kind == "too_short":
        least = ctx.get("min_length")
        return InvalidMessage(path, "must not be empty" if least == 1 else f"needs {least} items")
    if kind == "too_long":
        return InvalidMessage(path, f"allows at most {ctx.get('max_length')} items")
    if kind == "string_too_short":
        return InvalidMessage(path, "must not be empty")
    if kind == "string_too_long":
        return InvalidMessage(path, f"is longer than {ctx.get('max_length')} characters")
    return InvalidMessage(path, error["msg"])


def _check(model: type[BaseModel], data: Any, root: str) -> Any:
    if not isinstance(data, dict):
        raise InvalidMessage(root, f"an OpenC2 {root} is a JSON object, not {json_type(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc.errors(include_url=False)[0], root) from None


def parse_command(data: Any) -> Command:
    """``data`` (parsed JSON) as a valid command; InvalidMessage names the first problem."""
    if isinstance(data, dict) and "status" in data and "action" not in data:
        raise InvalidMessage(
            "command", "this is an OpenC2 response (it has a 'status'), not a command"
        )
    command: Command = _check(Command, data, "command")
    return command


def parse_response(data: Any) -> Response:
    """``data`` (parsed JSON) as a valid response; InvalidMessage names the first problem."""
    if isinstance(data, dict) and "action" in data and "status" not in data:
        raise InvalidMessage(
            "response", "this is an OpenC2 command (it has an 'action'), not a response"
        )
    response: Response = _check(Response, data, "response")
    return response


def load_json(body: bytes, root: str) -> Any:
    """The JSON document in ``body``; InvalidMessage when there is none."""
    if not body.strip():
        raise InvalidMessage(root, "the body is empty; an OpenC2 message is a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(root, f"not valid JSON: {exc}") from None


__all__ = [
    "ACTIONS",
    "FEATURES",
    "LANGUAGE_VERSION",
    "PROFILE",
    "SLPF_PAIRS",
    "STATUS_CODES",
    "TARGET_TYPES",
    "Actuator",
    "Args",
    "Command",
    "InvalidMessage",
    "OpenC2Model",
    "Response",
    "Results",
    "SlpfActuator",
    "SlpfArgs",
    "SlpfResults",
    "Target",
    "json_path",
    "load_json",
    "parse_command",
    "parse_response",
]
