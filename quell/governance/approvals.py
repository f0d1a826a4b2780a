"""Approval policy: which writes need people's approval, how many, from whom, for how long.

A rule matches a write by its risk, its action key or connector, the tags and criticality of
the assets its inputs name, and who started the run (automation: a trigger or a schedule; a
person: a run started by hand). The first enabled rule by ``position`` that matches decides:

- ``approvals``: how many *distinct* people must approve (a critical action always needs two);
- ``roles``: which roles may decide (none listed: anyone holding ``approvals:decide``);
- ``expires_after`` and ``on_expiry``: how long the approval waits and what then (skip, fail,
  or escalate: hand it to ``escalate_to`` for one more period, then fail);
- ``escalate_after`` and ``escalate_to``: a reminder path: the approval widens to these roles
  if nobody has decided by then.

Separation of duties holds whatever the rule says: whoever started the run by hand and whoever
wrote the playbook version cannot approve its writes, and one person counts once (a second
decision by the same person is refused). See :mod:`quell.engine.waits` for the decisions and
:mod:`quell.governance.approval_links` for the signed links.

Assets get tags through the guardrails (``quell guardrail tag``); a tag ``criticality:<level>``
(low, medium, high, critical) gives an asset its criticality.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import delete, func, insert, select, update

from quell.clock import Clock
from quell.durations import format_duration, parse_duration
from quell.errors import InvalidInput, NotFound
from quell.governance.audit import AuditLog
from quell.ids import new_id
from quell.playbooks.ir import ExpiryOutcome
from quell.sdk.actions import RiskLevel
from quell.store.database import Database
from quell.store.schema import approval_rules

if TYPE_CHECKING:
    from quell.connectors.registry import Registry

MAX_APPROVALS = 5
CRITICAL_APPROVALS = 2  # a critical action needs at least two distinct approvers
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_PATTERN = re.compile(r"^[a-z0-9_.*?\[\]-]{1,128}$")
_ROLE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class Initiator(StrEnum):
    """Who started the run a write belongs to."""

    AUTOMATION = "automation"  # a trigger (alert, incident, SLA breach) or a schedule
    PERSON = "person"  # started by hand, through the API or the CLI


class Criticality(StrEnum):
    """How much an asset matters, from its ``criticality:<level>`` tag."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Order: low < medium < high < critical."""
        return list(Criticality).index(self)


def criticality_of(tags: Iterable[str]) -> Criticality | None:
    """The highest ``criticality:<level>`` among an asset's tags."""
    found: Criticality | None = None
    for tag in tags:
        name, colon, level = tag.partition(":")
        if colon and name == "criticality":
            try:
                value = Criticality(level)
            except ValueError:
                continue
            if found is None or value.rank > found.rank:
                found = value
    return found


Seconds = Annotated[int, Field(ge=60, le=30 * 86_400)]


def _seconds(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return int(parse_duration(value, field=name).total_seconds())
    return value


class RuleMatch(BaseModel):
    """What a rule matches; every condition given must hold (a list holds when any item
    does). An empty match matches every write."""

    model_config = ConfigDict(extra="forbid")

    risks: list[RiskLevel] = Field(default_factory=list, description="Any of these risks.")
    actions: list[str] = Field(
        default_factory=list, description="Action keys, with * and ? (nftables.*)."
    )
    connectors: list[str] = Field(default_factory=list, description="Connector names.")
    asset_tags: list[str] = Field(
        default_factory=list, description="A named asset carries any of these tags."
    )
    criticality: Criticality | None = Field(
        default=None, description="A named asset is at least this critical."
    )
    initiator: Initiator | None = Field(default=None, description="Who started the run.")

    @field_validator("actions", "connectors", "asset_tags")
    @classmethod
    def _patterns(cls, values: list[str]) -> list[str]:
        out = [value.strip().lower() for value in values]
        for value in out:
            if not _PATTERN.match(value):
                raise ValueError(f"{value!r} is not an action key, connector name or tag")
        return out

    @field_validator("risks")
    @classmethod
    def _writes(cls, values: list[RiskLevel]) -> list[RiskLevel]:
        if RiskLevel.READ in values:
            raise ValueError("reads never need approval: risk 'read' cannot be matched")
        return values


class RuleIn(BaseModel):
    """An approval rule as people write it (``quell approval rule add``, the API)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None,
        description="A unique name: lowercase letters, digits, . _ - (in the "
        "API, the path gives it).",
    )
    description: str | None = Field(default=None, max_length=2000)
    match: RuleMatch = Field(default_factory=RuleMatch)
    approvals: int = Field(default=1, ge=1, le=MAX_APPROVALS, description="Distinct approvers.")
    roles: list[str] = Field(default_factory=list, description="Roles that may decide.")
    expires_after: Seconds | None = Field(
        default=None, description="How long it waits: seconds or a duration (4h)."
    )
    on_expiry: ExpiryOutcome = Field(default=ExpiryOutcome.FAIL)
    escalate_after: Seconds | None = Field(
        default=None, description="When it widens to escalate_to if undecided."
    )
    escalate_to: list[str] = Field(default_factory=list, description="Roles it escalates to.")
    position: int | None = Field(default=None, ge=0, le=100_000)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("lowercase letters, digits, . _ - (at most 64)")
        return value

    @field_validator("roles", "escalate_to")
    @classmethod
    def _roles(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            name = value.strip().lower()
            if not _ROLE.match(name):
                raise ValueError(f"{value!r} is not a role name")
            if name not in out:
                out.append(name)
        return out

    @field_validator("expires_after", "escalate_after", mode="before")
    @classmethod
    def _durations(cls, value: Any, info: Any) -> Any:
        return _seconds(value, info.field_name)

    @model_validator(mode="after")
    def _coherent(self) -> RuleIn:
        if self.escalate_after is not None and not self.escalate_to:
            raise ValueError("escalate_after needs escalate_to (the roles it escalates to)")
        if self.on_expiry is ExpiryOutcome.ESCALATE and not self.escalate_to:
            raise ValueError("on_expiry: escalate needs escalate_to (the roles it escalates to)")
        if self.on_expiry is not ExpiryOutcome.FAIL and self.expires_after is None:
            raise ValueError(f"on_expiry: {self.on_expiry.value} needs expires_after")
        if (
            self.escalate_after is not None
            and self.expires_after is not None
            and self.escalate_after >= self.expires_after
        ):
            raise ValueError("escalate_after must come before expires_after")
        return self


@dataclass(frozen=True)
class Requirement:
    """What one write needs before it is made."""

    rule: str | None
    approvals: int = 1
    roles: tuple[str, ...] = ()
    expires_after: int | None = None
    on_expiry: ExpiryOutcome | None = None
    escalate_after: int | None = None
    escalate_to: tuple[str, ...] = ()

    def at_least(self, approvals: int) -> Requirement:
        """The same, needing at least ``approvals`` people."""
        if self.approvals >= approvals:
            return self
        return Requirement(
            self.rule, approvals, self.roles, self.expires_after, self.on_expiry,
            self.escalate_after, self.escalate_to,
        )  # fmt: skip


@dataclass(frozen=True)
class ApprovalRule:
    """A stored rule."""

    id: str
    name: str
    position: int
    enabled: bool
    description: str | None
    match: RuleMatch
    approvals: int
    roles: tuple[str, ...]
    expires_after: int | None
    on_expiry: ExpiryOutcome
    escalate_after: int | None
    escalate_to: tuple[str, ...]
    updated_by: str | None = None
    updated_at: datetime | None = None
    created_by: str | None = None
    created_at: datetime | None = None

    @property
    def requirement(self) -> Requirement:
        """What a write this rule matches needs."""
        return Requirement(
            rule=self.name,
            approvals=self.approvals,
            roles=self.roles,
            expires_after=self.expires_after,
            on_expiry=self.on_expiry,
            escalate_after=self.escalate_after,
            escalate_to=self.escalate_to,
        )

    @property
    def needs_initiator(self) -> bool:
        """Whether matching asks who started the run."""
        return self.match.initiator is not None

    def matches(
        self,
        *,
        action: str,
        risk: RiskLevel,
        assets: Sequence[Sequence[str]],
        initiator: Initiator | None,
    ) -> bool:
        """Whether this rule applies to a write (``assets``: the tags of each asset the write's
        inputs name)."""
        if not self.enabled or risk is RiskLevel.READ:
            return False
        match = self.match
        if match.risks and risk not in match.risks:
            return False
        key = action.lower()
        if match.actions and not any(fnmatch.fnmatchcase(key, p) for p in match.actions):
            return False
        if match.connectors and key.partition(".")[0] not in match.connectors:
            return False
        if match.asset_tags:
            wanted = set(match.asset_tags)
            if not any(wanted.intersection(tags) for tags in assets):
                return False
        if match.criticality is not None:
            floor = match.criticality.rank
            levels = [criticality_of(tags) for tags in assets]
            if not any(level is not None and level.rank >= floor for level in levels):
                return False
        return match.initiator is None or match.initiator is initiator

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "position": self.position,
            "enabled": self.enabled,
            "description": self.description,
            "match": self.match.model_dump(mode="json", exclude_defaults=True),
            "approvals": self.approvals,
            "roles": list(self.roles),
            "expires_after": self.expires_after,
            "on_expiry": self.on_expiry.value,
            "escalate_after": self.escalate_after,
            "escalate_to": list(self.escalate_to),
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_by": self.updated_by,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


def requirement_for(
    rules: Sequence[ApprovalRule],
    *,
    action: str,
    risk: RiskLevel,
    assets: Sequence[Sequence[str]],
    initiator: Initiator | None,
) -> Requirement | None:
    """What the first matching rule asks of this write (None: no rule matches)."""
    for rule in rules:
        if rule.matches(action=action, risk=risk, assets=assets, initiator=initiator):
            requirement = rule.requirement
            if risk is RiskLevel.CRITICAL:
                requirement = requirement.at_least(CRITICAL_APPROVALS)
            return requirement
    return None


def _rule(row: Any) -> ApprovalRule:
    return ApprovalRule(
        id=row.id,
        name=row.name,
        position=row.position,
        enabled=bool(row.enabled),
        description=row.description,
        match=RuleMatch.model_validate(row.match or {}),
        approvals=int(row.approvals),
        roles=tuple(row.roles or ()),
        expires_after=row.expires_after,
        on_expiry=ExpiryOutcome(row.on_expiry or ExpiryOutcome.FAIL.value),
        escalate_after=row.escalate_after,
        escalate_to=tuple(row.escalate_to or ()),
        updated_by=row.updated_by,
        updated_at=row.updated_at,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def load_rules(conn: Any) -> tuple[ApprovalRule, ...]:
    """Every rule, in the order they are tried."""
    rows = conn.execute(select(approval_rules).order_by(approval_rules.c.position,
                                                        approval_rules.c.name))  # fmt: skip
    return tuple(_rule(row) for row in rows)


def parse_rule(data: Any) -> RuleIn:
    """A rule from plain data, or InvalidInput naming the field that is wrong."""
    try:
        return RuleIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "rule"
        raise InvalidInput(f"{where}: {first['msg']}", field=where) from None


class ApprovalRuleService:
    """Read and change the approval policy; every change is audited."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        audit: AuditLog | None = None,
        known_roles: Any = None,
        deciders: Any = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit or AuditLog(db, clock)
        # A callable giving the roles that hold approvals:decide.
        self.deciders = deciders
        # A callable giving the role names that exist (built-in and custom), to refuse a rule
        # naming a role nobody can hold.
        self.known_roles = known_roles

    def list_all(self) -> list[ApprovalRule]:
        """Every rule, in the order they are tried."""
        with self.db.read() as conn:
            return list(load_rules(conn))

    def get(self, name: str) -> ApprovalRule:
        """One rule."""
        with self.db.read() as conn:
            row = conn.execute(select(approval_rules).where(approval_rules.c.name == name)).first()
        if row is None:
            raise NotFound(f"no approval rule {name!r}", field="name", value=name)
        return _rule(row)

    def put(self, rule: RuleIn, *, by: str, known: Registry | None = None) -> ApprovalRule:
        """Create the rule, or replace the one of that name; the rule as stored. With
        ``known``, each action pattern must match one of its actions and each connector be
        one of its connectors (a rule that can never match is a mistake)."""
        if rule.name is None:
            raise InvalidInput("an approval rule needs a name", field="name")
        if known is not None:
            for pattern in rule.match.actions:
                known.check_pattern(pattern, "match.actions")
            for connector in rule.match.connectors:
                known.check_connector(connector, "match.connectors")
        self._check_roles([*rule.roles, *rule.escalate_to])
        now = self.clock.now()
        values = {
            "description": rule.description,
            "match": rule.match.model_dump(mode="json", exclude_defaults=True),
            "approvals": rule.approvals,
            "roles": list(rule.roles) or None,
            "expires_after": rule.expires_after,
            "on_expiry": rule.on_expiry.value,
            "escalate_after": rule.escalate_after,
            "escalate_to": list(rule.escalate_to) or None,
            "enabled": rule.enabled,
            "updated_by": by,
            "updated_at": now,
        }
        with self.db.write() as conn:
            before = conn.execute(
                select(approval_rules).where(approval_rules.c.name == rule.name)
            ).first()
            if before is None:
                position = rule.position
                if position is None:
                    last = conn.execute(select(func.max(approval_rules.c.position))).scalar()
                    position = (int(last) + 10) if last is not None else 10
                conn.execute(
                    insert(approval_rules).values(
                        id=new_id("apr"), name=rule.name, position=position, created_by=by,
                        created_at=now, **values,
                    )
                )  # fmt: skip
            else:
                if rule.position is not None:
                    values["position"] = rule.position
                conn.execute(
                    update(approval_rules).where(approval_rules.c.id == before.id).values(values)
                )
        stored = self.get(rule.name)
        self._changed()
        self.audit.record(
            by,
            "approval_rule.update" if before is not None else "approval_rule.create",
            rule.name,
            {
                "before": _rule(before).as_dict() if before is not None else None,
                "after": stored.as_dict(),
            },
        )
        return stored

    def set_enabled(self, name: str, enabled: bool, *, by: str) -> ApprovalRule:
        """Turn a rule on or off."""
        before = self.get(name)
        with self.db.write() as conn:
            conn.execute(
                update(approval_rules)
                .where(approval_rules.c.name == name)
                .values(enabled=enabled, updated_by=by, updated_at=self.clock.now())
            )
        self._changed()
        self.audit.record(
            by,
            "approval_rule.enable" if enabled else "approval_rule.disable",
            name,
            {"before": {"enabled": before.enabled}, "after": {"enabled": enabled}},
        )
        return self.get(name)

    def remove(self, name: str, *, by: str) -> None:
        """Delete a rule (pending approvals it asked for stay as they are)."""
        before = self.get(name)
        with self.db.write() as conn:
            conn.execute(delete(approval_rules).where(approval_rules.c.name == name))
        self._changed()
        self.audit.record(by, "approval_rule.remove", name, {"before": before.as_dict()})

    def _check_roles(self, names: Sequence[str]) -> None:
        if self.known_roles is None:
            return
        known = set(self.known_roles())
        for name in names:
            if name not in known:
                raise InvalidInput(
                    f"unknown role {name!r}; roles are: {', '.join(sorted(known))}",
                    field="roles",
                    value=name,
                )
            if self.deciders is not None and name not in self.deciders():
                raise InvalidInput(
                    f"role {name!r} lacks the permission 'approvals:decide': it could never "
                    "decide this approval",
                    field="roles",
                    value=name,
                )

    @staticmethod
    def _changed() -> None:
        from quell.engine.guardrails import policy_changed

        policy_changed()


def describe(requirement: Requirement) -> str:
    """A short human description: ``2 approvals from approver, admin; expires in 4h``."""
    parts = [f"{requirement.approvals} approval{'s' if requirement.approvals > 1 else ''}"]
    if requirement.roles:
        parts[0] += f" from {', '.join(requirement.roles)}"
    if requirement.rule:
        parts.append(f"rule {requirement.rule}")
    if requirement.expires_after:
        from datetime import timedelta

        parts.append(f"expires in {format_duration(timedelta(seconds=requirement.expires_after))}")
    return "; ".join(parts)


__all__ = [
    "CRITICAL_APPROVALS",
    "ApprovalRule",
    "ApprovalRuleService",
    "Criticality",
    "Initiator",
    "Requirement",
    "RuleIn",
    "RuleMatch",
    "criticality_of",
    "describe",
    "load_rules",
    "parse_rule",
    "requirement_for",
]
