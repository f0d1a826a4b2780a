"""``nftables``: OpenC2 stateless packet filtering (SLPF) on a Linux host's nftables.

Quell owns one table, ``inet <table>`` (``quell`` by default), with one base chain named after
its hook, and never reads or changes any other rule of the host. ``deny`` appends a ``drop``
(or ``reject``) rule, ``allow`` inserts an ``accept`` rule at the top of the chain (so an allow
wins over Quell's own denies), ``delete`` removes a rule by its number, the nft rule handle
that OpenC2 calls ``slpf:rule_number``.

Every rule Quell adds carries the comment ``quell:<16 hex>``, a short SHA-256 of the step's
idempotency key: a retried attempt finds the rule its earlier attempt added instead of adding
another, and the ``find_rule`` reconcile hook answers whether an attempt landed.

An expiring rule (``expires_in``) is enforced by the kernel, so it ends even when Quell is
down: the rule matches a named set of its own (``e<16 hex>``, flags ``interval, timeout``)
whose one element (the address or network) carries the timeout. When the element times out
the rule matches nothing; such rules and their sets are deleted at the next ``deny``,
``allow`` or ``list_rules``.

nft runs as a child process (never through a shell), through the configured ``command``
prefix, for example ``["sudo", "-n", "nft"]`` or ``["ip", "netns", "exec", "edge", "nft"]``.
Rules are written as an nft script on standard input (one atomic transaction) and read back
with ``nft -j list table``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    Connector,
    Landed,
    PermanentError,
    Reconciliation,
    RiskLevel,
    TargetNotFound,
    TransientError,
    action,
)

MAX_EXPIRY = 30 * 24 * 3600  # seconds
TAG_PREFIX = "quell:"
_TAG = re.compile(r"^quell:([0-9a-f]{16})$")
_SET_NAME = re.compile(r"^e[0-9a-f]{16}$")
# nft's own words (not a wrapper's, such as ``ip netns exec``) for "no such table or rule"
_MISSING = re.compile(r"^Error: (Could not process rule: )?No such file or directory")
_STDERR_LIMIT = 400

# The OpenC2 SLPF pairs this connector answers: (action, target) -> action name.
OPENC2_PAIRS: dict[tuple[str, str], str] = {
    (verb, target): verb
    for verb in ("deny", "allow")
    for target in ("ipv4_net", "ipv6_net", "ipv4_connection", "ipv6_connection")
} | {("delete", "slpf:rule_number"): "delete"}

Protocol = Literal["tcp", "udp", "icmp", "sctp"]
_PORT_PROTOCOLS = ("tcp", "udp", "sctp")


def _net(version: Literal[4, 6]) -> Any:
    """A validator of an IPv4 or IPv6 address or CIDR network, as nft writes it."""

    def check(value: str) -> str:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv{version} address or network") from None
        if network.version != version:
            raise ValueError(f"{value!r} is not an IPv{version} address or network")
        if network.prefixlen == network.max_prefixlen:
            return str(network.network_address)
        return str(network)

    return AfterValidator(check)


IPv4Net = Annotated[str, _net(4)]
IPv6Net = Annotated[str, _net(6)]
Port = Annotated[int, Field(ge=0, le=65535)]


class _Connection(BaseModel):
    """An OpenC2 connection 5-tuple; every field is optional, at least one is given."""

    model_config = ConfigDict(extra="forbid")

    src_port: Port | None = None
    dst_port: Port | None = None
    protocol: Protocol | None = Field(
        None, description="Layer 4 protocol; ports need tcp, udp or sctp (any of them if unset)."
    )

    @property
    def addresses(self) -> tuple[str | None, str | None]:
        """The source and destination address (overridden by the typed subclasses)."""
        return None, None

    @model_validator(mode="after")
    def _complete(self) -> _Connection:
        src, dst = self.addresses
        if all(v is None for v in (src, dst, self.src_port, self.dst_port, self.protocol)):
            raise ValueError(
                "a connection needs at least one of src_addr, src_port, dst_addr, dst_port, "
                "protocol"
            )
        has_port = self.src_port is not None or self.dst_port is not None
        if has_port and self.protocol is not None and self.protocol not in _PORT_PROTOCOLS:
            raise ValueError(f"ports need protocol tcp, udp or sctp, not {self.protocol}")
        return self


class IPv4Connection(_Connection):
    """An IPv4 connection: addresses are IPv4 addresses or networks."""

    src_addr: IPv4Net | None = None
    dst_addr: IPv4Net | None = None

    @property
    def addresses(self) -> tuple[str | None, str | None]:
        """The source and destination address."""
        return self.src_addr, self.dst_addr


class IPv6Connection(_Connection):
    """An IPv6 connection: addresses are IPv6 addresses or networks."""

    src_addr: IPv6Net | None = None
    dst_addr: IPv6Net | None = None

    @property
    def addresses(self) -> tuple[str | None, str | None]:
        """The source and destination address."""
        return self.src_addr, self.dst_addr


_TARGETS = ("ipv4_net", "ipv6_net", "ipv4_connection", "ipv6_connection")


class RuleIn(ActionInput):
    """One OpenC2 SLPF target (exactly one of the four), how long, and which direction."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"ipv4_net": "203.0.113.7", "expires_in": 3600},
                {"ipv4_connection": {"dst_addr": "198.51.100.0/24", "dst_port": 443,
                                     "protocol": "tcp"}},
            ]
        },
    )  # fmt: skip

    ipv4_net: IPv4Net | None = Field(None, description="An IPv4 address or CIDR network.")
    ipv6_net: IPv6Net | None = Field(None, description="An IPv6 address or CIDR network.")
    ipv4_connection: IPv4Connection | None = None
    ipv6_connection: IPv6Connection | None = None
    direction: Literal["ingress", "egress"] = Field(
        "ingress",
        description="For a net target: ingress matches it as source, egress as destination.",
    )
    expires_in: int | None = Field(
        None,
        gt=0,
        le=MAX_EXPIRY,
        description="Seconds until the kernel stops applying the rule (at most 30 days).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> RuleIn:
        given = [name for name in _TARGETS if getattr(self, name) is not None]
        if len(given) != 1:
            found = " and ".join(given) if given else "none"
            raise ValueError(f"give exactly one target of {', '.join(_TARGETS)}; got {found}")
        connection = self.connection
        if (
            self.expires_in is not None
            and connection is not None
            and connection.addresses == (None, None)
        ):
            raise ValueError(
                f"expires_in needs an address to expire: {given[0]} has neither src_addr "
                "nor dst_addr"
            )
        return self

    @property
    def connection(self) -> _Connection | None:
        """The connection target, if that is the one given."""
        return self.ipv4_connection or self.ipv6_connection

    @property
    def target(self) -> dict[str, Any]:
        """The target as an OpenC2 target object, e.g. ``{"ipv4_net": "10.0.0.0/8"}``."""
        for name in _TARGETS:
            value = getattr(self, name)
            if isinstance(value, BaseModel):
                return {name: value.model_dump(exclude_none=True)}
            if value is not None:
                return {name: value}
        return {}  # unreachable: the validator requires one


class DenyIn(RuleIn):
    """An OpenC2 ``deny``; ``drop_process`` is SLPF's: drop silently or reject."""

    drop_process: Literal["none", "reject"] = Field(
        "none", description="none: drop silently; reject: answer ICMP unreachable / TCP reset."
    )


class RuleOut(ActionOutput):
    """The rule added (or, in a dry run, the one that would be)."""

    rule_number: int | None = Field(description="The nft rule handle (OpenC2 slpf:rule_number).")
    expires_at: datetime | None = None
    target: dict[str, Any]
    would_add: str | None = Field(None, description="Dry run only: the nft commands.")


class DeleteIn(ActionInput):
    """An OpenC2 ``delete slpf:rule_number``."""

    rule_number: int = Field(ge=1, description="The nft rule handle a deny or allow returned.")


class DeleteOut(ActionOutput):
    """The rule deleted, with the expiry sets that went with it."""

    rule_number: int
    deleted_sets: list[str] = Field(default_factory=list)


class ListIn(ActionInput):
    """Nothing."""


class RuleInfo(BaseModel):
    """One rule of Quell's table."""

    rule_number: int
    chain: str
    verdict: str
    match: str = Field(description="The rule's matches in nft syntax.")
    comment: str | None = None
    expires_at: datetime | None = None
    expired: bool = Field(False, description="Its expiry set is empty: it matches nothing.")


class ListOut(ActionOutput):
    """The rules of Quell's table, in chain order."""

    table: str
    rules: list[RuleInfo]


class NftablesConfig(BaseModel):
    """How to reach nft, and where Quell's rules live."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(
        default_factory=lambda: ["nft"],
        min_length=1,
        description='The argv prefix that runs nft, e.g. ["sudo", "-n", "nft"].',
    )
    table: str = Field("quell", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    hook: Literal["input", "forward", "output"] = "input"
    priority: int = Field(-10, ge=-1000, le=1000)
    timeout: float = Field(10.0, gt=0, le=300, description="Seconds per nft call.")


@dataclass
class _Rule:
    handle: int
    chain: str
    comment: str | None
    expr: list[Any]

    @property
    def tag(self) -> str | None:
        match = _TAG.match(self.comment or "")
        return match[1] if match else None

    @property
    def sets(self) -> list[str]:
        """The named sets the rule looks up (``@name``)."""
        found = []
        for item in self.expr:
            right = item.get("match", {}).get("right") if isinstance(item, dict) else None
            if isinstance(right, str) and right.startswith("@"):
                found.append(right[1:])
        return found


@dataclass
class _Set:
    name: str
    elements: int
    expires: float | None  # seconds left of its first-expiring element


@dataclass
class _Table:
    rules: list[_Rule] = field(default_factory=list)
    sets: dict[str, _Set] = field(default_factory=dict)

    def by_tag(self, tag: str) -> _Rule | None:
        return next((rule for rule in self.rules if rule.tag == tag), None)

    def by_handle(self, handle: int) -> _Rule | None:
        return next((rule for rule in self.rules if rule.handle == handle), None)

    def expired(self, rule: _Rule) -> bool:
        """Whether the rule's expiry set (one Quell made) has no element left."""
        return any(
            _SET_NAME.match(name) and name in self.sets and self.sets[name].elements == 0
            for name in rule.sets
        )

    def expires_at(self, rule: _Rule) -> datetime | None:
        left = [self.sets[n].expires for n in rule.sets if n in self.sets]
        seconds = min((s for s in left if s is not None), default=None)
        return None if seconds is None else datetime.now(UTC) + timedelta(seconds=seconds)


class _NftFailed(PermanentError):
    """nft (or the command in front of it) failed; ``missing``: nft found no such object."""

    def __init__(self, message: str, *, missing: bool, status: int | None) -> None:
        super().__init__(message, details={"exit_status": status})
        self.missing = missing


def _tag(ctx: ActionContext) -> str:
    return hashlib.sha256(ctx.step_idempotency_key.encode()).hexdigest()[:16]


def _trim(stderr: bytes) -> str:
    """nft's complaint on one line, without the caret lines that point into the command."""
    lines = [
        line.strip()
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and set(line.strip()) - {"^", "~"}
    ]
    text = " | ".join(lines) or "no error message"
    return text if len(text) <= _STDERR_LIMIT else text[: _STDERR_LIMIT - 1] + "…"


def _render(value: Any) -> str:
    """A JSON nft expression in nft's own syntax (the shapes Quell writes; others as JSON)."""
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "payload" and isinstance(inner, dict):
            return f"{inner.get('protocol')} {inner.get('field')}"
        if key == "meta" and isinstance(inner, dict):
            return f"meta {inner.get('key')}"
        if key == "prefix" and isinstance(inner, dict):
            return f"{inner.get('addr')}/{inner.get('len')}"
        if key == "set" and isinstance(inner, list):
            return "{ " + ", ".join(_render(v) for v in inner) + " }"
        if key == "range" and isinstance(inner, list) and len(inner) == 2:
            return f"{_render(inner[0])}-{_render(inner[1])}"
    return orjson.dumps(value).decode()


_VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return", "continue", "queue")


def _describe(rule: _Rule) -> tuple[str, str]:
    """The rule's matches and its verdict, as text."""
    matches, verdict = [], ""
    for item in rule.expr:
        if not isinstance(item, dict) or len(item) != 1:
            continue
        ((key, inner),) = item.items()
        if key == "match" and isinstance(inner, dict):
            op = inner.get("op", "==")
            middle = "" if op in ("==", "in") else f" {op}"
            matches.append(f"{_render(inner.get('left'))}{middle} {_render(inner.get('right'))}")
        elif key in _VERDICTS:
            verdict = key
    return " ".join(matches), verdict


def _parse(payload: bytes) -> _Table:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise PermanentError("nft list: the output is not JSON") from None
    table = _Table()
    for entry in document.get("nftables", []) if isinstance(document, dict) else []:
        if not isinstance(entry, dict):
            continue
        if isinstance(rule := entry.get("rule"), dict):
            table.rules.append(
                _Rule(
                    handle=int(rule["handle"]),
                    chain=str(rule.get("chain", "")),
                    comment=rule.get("comment"),
                    expr=list(rule.get("expr") or []),
                )
            )
        elif isinstance(nft_set := entry.get("set"), dict):
            elements = nft_set.get("elem") or []
            left = [
                float(e["elem"]["expires"])
                for e in elements
                if isinstance(e, dict)
                and isinstance(e.get("elem"), dict)
                and isinstance(e["elem"].get("expires"), int | float)
            ]
            name = str(nft_set.get("name", ""))
            table.sets[name] = _Set(name, len(elements), min(left, default=None))
    return table


class Nftables(Connector):
    """OpenC2 SLPF on the host's nftables, in a table of Quell's own."""

    name = "nftables"
    title = "nftables (OpenC2 SLPF)"
    Config = NftablesConfig
    needs_instance = True  # unconfigured, it would change this host's own firewall

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, NftablesConfig) else NftablesConfig()

    # -- actions ---------------------------------------------------------------------------

    @action(
        "deny",
        risk=RiskLevel.HIGH,
        title="Block traffic (OpenC2 deny)",
        supports_dry_run=True,
        reverts="delete",
        reconcile="find_rule",
        openc2=("deny", "ipv4_net", "slpf"),
    )
    async def deny(self, ctx: ActionContext, params: DenyIn) -> RuleOut:
        """Drop (or reject) the target's traffic; returns the rule number to delete it by."""
        verdict = "drop" if params.drop_process == "none" else "reject"
        return await self._add(ctx, params, verdict, first=False)

    @action(
        "allow",
        risk=RiskLevel.MEDIUM,
        title="Permit traffic (OpenC2 allow)",
        supports_dry_run=True,
        reverts="delete",
        reconcile="find_rule",
        openc2=("allow", "ipv4_net", "slpf"),
    )
    async def allow(self, ctx: ActionContext, params: RuleIn) -> RuleOut:
        """Accept the target's traffic ahead of every deny in Quell's table."""
        return await self._add(ctx, params, "accept", first=True)

    @action(
        "delete",
        risk=RiskLevel.MEDIUM,
        title="Remove a rule (OpenC2 delete slpf:rule_number)",
        reconcile="rule_gone",
        openc2=("delete", "slpf:rule_number", "slpf"),
    )
    async def delete(self, ctx: ActionContext, params: DeleteIn) -> DeleteOut:
        """Delete rule ``rule_number`` of Quell's table, and its expiry set."""
        table = await self._list()
        rule = table.by_handle(params.rule_number) if table else None
        if table is None or rule is None:
            raise TargetNotFound(
                f"no rule {params.rule_number} in table inet {self.settings.table}",
                details={"rule_number": params.rule_number},
            )
        sets = self._own_sets(table, [rule])
        try:
            await self._apply(self._delete_script([rule], sets))
        except _NftFailed as exc:
            if exc.missing:  # deleted meanwhile
                raise TargetNotFound(
                    f"no rule {params.rule_number} in table inet {self.settings.table}",
                    details={"rule_number": params.rule_number},
                ) from None
            raise
        ctx.log.info("nft_rule_deleted", rule_number=rule.handle, sets=sets)
        return DeleteOut(rule_number=rule.handle, deleted_sets=sets)

    @action(
        "list_rules",
        risk=RiskLevel.READ,
        idempotent=True,
        title="List Quell's firewall rules",
    )
    async def list_rules(self, ctx: ActionContext, params: ListIn) -> ListOut:
        """The rules of Quell's table (expired ones are removed first, unless in a dry run)."""
        table = await self._list()
        if table is None:
            return ListOut(table=self.settings.table, rules=[])
        if not ctx.dry_run:
            table = await self._collect(ctx, table)
        rules = []
        for rule in table.rules:
            match, verdict = _describe(rule)
            rules.append(
                RuleInfo(
                    rule_number=rule.handle,
                    chain=rule.chain,
                    verdict=verdict,
                    match=match,
                    comment=rule.comment,
                    expires_at=table.expires_at(rule),
                    expired=table.expired(rule),
                )
            )
        return ListOut(table=self.settings.table, rules=rules)

    async def health(self, ctx: ActionContext) -> str:
        """nft answers through the configured command, and can read Quell's table."""
        version = (await self._nft("nft --version", ["--version"])).decode().strip()
        table = await self._list()
        name = f"table inet {self.settings.table}"
        if table is None:
            return f"{version}; {name} not created yet"
        return f"{version}; {name}: {len(table.rules)} rule(s)"

    # -- reconcile hooks -------------------------------------------------------------------

    async def find_rule(self, ctx: ActionContext, params: RuleIn) -> Reconciliation:
        """Whether a rule carrying this attempt's idempotency key is in Quell's table."""
        table = await self._list()
        rule = table.by_tag(_tag(ctx)) if table else None
        if table is None or rule is None:
            return Reconciliation(Landed.NOT_LANDED, detail="no rule carries this step's key")
        output = self._output(table, rule, params)
        return Reconciliation(
            Landed.LANDED, output.model_dump(mode="json"), detail=f"rule {rule.handle}"
        )

    async def rule_gone(self, ctx: ActionContext, params: DeleteIn) -> Reconciliation:
        """Whether rule ``rule_number`` is gone from Quell's table (a delete landed)."""
        table = await self._list()
        if table is not None and table.by_handle(params.rule_number) is not None:
            return Reconciliation(Landed.NOT_LANDED, detail=f"rule {params.rule_number} is there")
        output = DeleteOut(rule_number=params.rule_number).model_dump(mode="json")
        return Reconciliation(Landed.LANDED, output, detail=f"rule {params.rule_number} is gone")

    # -- rules -----------------------------------------------------------------------------

    async def _add(self, ctx: ActionContext, params: RuleIn, verdict: str, first: bool) -> RuleOut:
        tag = _tag(ctx)
        script = self._add_script(params, verdict, tag, first)
        if ctx.dry_run:
            return RuleOut(rule_number=None, target=params.target, would_add=script)
        table = await self._list()
        if table is not None:
            existing = table.by_tag(tag)
            if existing is not None:
                ctx.log.info("nft_rule_exists", rule_number=existing.handle)
                return self._output(table, existing, params)
            await self._collect(ctx, table)
        await self._apply(self._ensure_script() + script)
        table = await self._list()
        added = table.by_tag(tag) if table else None
        if table is None or added is None:
            raise PermanentError(
                f"nft accepted the rule but table inet {self.settings.table} does not show it"
            )
        ctx.log.info("nft_rule_added", rule_number=added.handle, verdict=verdict)
        return self._output(table, added, params)

    def _output(self, table: _Table, rule: _Rule, params: RuleIn) -> RuleOut:
        return RuleOut(
            rule_number=rule.handle, expires_at=table.expires_at(rule), target=params.target
        )

    def _ensure_script(self) -> str:
        name, hook = self.settings.table, self.settings.hook
        return (
            f"add table inet {name}\n"
            f"add chain inet {name} {hook} "
            f"{{ type filter hook {hook} priority {self.settings.priority}; policy accept; }}\n"
        )

    def _add_script(self, params: RuleIn, verdict: str, tag: str, first: bool) -> str:
        """The nft commands adding the rule (and its expiry set): validated values only."""
        table, chain = self.settings.table, self.settings.hook
        lines: list[str] = []
        matches: list[str] = []
        set_name = f"e{tag}"
        connection = params.connection
        if connection is None:
            family = "ip" if params.ipv4_net is not None else "ip6"
            address = params.ipv4_net or params.ipv6_net
            side = "saddr" if params.direction == "ingress" else "daddr"
            if params.expires_in is not None:
                lines.append(self._set_line(set_name, family, address, params.expires_in))
                address = f"@{set_name}"
            matches.append(f"{family} {side} {address}")
        else:
            family = "ip" if params.ipv4_connection is not None else "ip6"
            src, dst = connection.addresses
            expiring = src if src is not None else dst
            for side, address in (("saddr", src), ("daddr", dst)):
                if address is None:
                    continue
                if params.expires_in is not None and address == expiring:
                    lines.append(self._set_line(set_name, family, address, params.expires_in))
                    address = f"@{set_name}"
                    expiring = None
                matches.append(f"{family} {side} {address}")
            if src is None and dst is None:
                matches.append(f"meta nfproto {'ipv4' if family == 'ip' else 'ipv6'}")
            matches.extend(_transport(connection, family))
        verb = "insert" if first else "add"
        lines.append(
            f"{verb} rule inet {table} {chain} {' '.join(matches)} {verdict} "
            f'comment "{TAG_PREFIX}{tag}"'
        )
        return "\n".join(lines) + "\n"

    def _set_line(self, name: str, family: str, address: str | None, seconds: int) -> str:
        kind = "ipv4_addr" if family == "ip" else "ipv6_addr"
        return (
            f"add set inet {self.settings.table} {name} {{ type {kind}; flags interval, timeout; "
            f"elements = {{ {address} timeout {seconds}s }}; }}"
        )

    def _own_sets(self, table: _Table, rules: list[_Rule]) -> list[str]:
        """The expiry sets of ``rules`` that no other rule uses."""
        handles = {rule.handle for rule in rules}
        used_elsewhere = {n for r in table.rules if r.handle not in handles for n in r.sets}
        return sorted(
            {
                name
                for rule in rules
                for name in rule.sets
                if _SET_NAME.match(name) and name in table.sets and name not in used_elsewhere
            }
        )

    def _delete_script(self, rules: list[_Rule], sets: list[str]) -> str:
        table = self.settings.table
        lines = [f"delete rule inet {table} {rule.chain} handle {rule.handle}" for rule in rules]
        lines += [f"delete set inet {table} {name}" for name in sets]
        return "\n".join(lines) + "\n"

    async def _collect(self, ctx: ActionContext, table: _Table) -> _Table:
        """Delete the rules whose expiry set is empty; the table without them."""
        expired = [rule for rule in table.rules if table.expired(rule)]
        if not expired:
            return table
        sets = self._own_sets(table, expired)
        try:
            await self._apply(self._delete_script(expired, sets))
        except PermanentError as exc:  # another worker collected them first, most likely
            ctx.log.warning("nft_collect_failed", error=exc.message)
            return table
        ctx.log.info("nft_rules_expired", rule_numbers=[rule.handle for rule in expired])
        gone = {rule.handle for rule in expired}
        return _Table(
            rules=[rule for rule in table.rules if rule.handle not in gone],
            sets={name: s for name, s in table.sets.items() if name not in sets},
        )

    # -- nft -------------------------------------------------------------------------------

    async def _list(self) -> _Table | None:
        """Quell's table as nft lists it, or None when it does not exist yet."""
        try:
            output = await self._nft(
                "nft list table", ["-j", "list", "table", "inet", self.settings.table]
            )
        except _NftFailed as exc:
            if exc.missing:
                return None
            raise
        return _parse(output)

    async def _apply(self, script: str) -> None:
        """Run an nft script as one transaction."""
        await self._nft("nft -f (script)", ["-f", "-"], script.encode())

    async def _nft(self, what: str, args: list[str], stdin: bytes | None = None) -> bytes:
        """Run nft with ``args``; its standard output, or the error nft reported as ``what``."""
        argv = [*self.settings.command, *args]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise PermanentError(
                f"cannot run {argv[0]!r}: command not found", code="command_not_found"
            ) from None
        except OSError as exc:
            raise PermanentError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.settings.timeout):
                stdout, stderr = await process.communicate(stdin)
        except TimeoutError:
            raise TransientError(
                f"{what}: no answer within {self.settings.timeout:g}s", code="timeout"
            ) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.returncode != 0:
            raise _NftFailed(
                f"{what} failed (exit {process.returncode}): {_trim(stderr)}",
                missing=bool(_MISSING.match(stderr.decode("utf-8", "replace").lstrip())),
                status=process.returncode,
            )
        return stdout


def _transport(connection: _Connection, family: str) -> list[str]:
    """The protocol and port matches of a connection."""
    protocol = connection.protocol
    if protocol == "icmp":
        return ["meta l4proto " + ("icmp" if family == "ip" else "ipv6-icmp")]
    ports = [
        f"th {name} {port}"
        for name, port in (("sport", connection.src_port), ("dport", connection.dst_port))
        if port is not None
    ]
    if protocol is not None:
        return [f"meta l4proto {protocol}", *ports]
    if ports:
        return ["meta l4proto { tcp, udp, sctp }", *ports]
    return []


__all__ = [
    "OPENC2_PAIRS",
    "DeleteIn",
    "DeleteOut",
    "DenyIn",
    "IPv4Connection",
    "IPv6Connection",
    "ListIn",
    "ListOut",
    "Nftables",
    "NftablesConfig",
    "RuleIn",
    "RuleInfo",
    "RuleOut",
]
