"""Guardrails: policy checked before every non-read action a run is about to call.

Four rules, set by people (``quell guardrail …``, ``/api/guardrails``) and read by every worker:

- **Kill switch.** While it is on, every run's writes are held: the step waits (recorded as a
  ``<step>#guard`` record with the reason) and is checked again every
  :data:`RECHECK` seconds, and at once when the switch is turned off. Reads go on.
- **Hourly limits** per action (``nftables.deny``) or per risk (``high``): an execution beyond
  the limit is refused, and the step fails with ``guardrail_limit`` (its ``on_failure`` may
  handle it). Executions are counted in the database, so a limit binds every worker.
- **Protected assets**: addresses, networks or names (``10.0.0.5``, ``10.1.0.0/16``,
  ``dc01.corp.example``). A write whose inputs name one is never made without a person's
  approval: the step asks for it as ``approval: true`` would.
- **Circuit breaker**: when a playbook's runs fail too often (at least ``min_runs`` runs ended
  within ``window_minutes``, and at least ``failure_rate`` of them failed), the breaker opens
  for that playbook and its writes are held, as under the kill switch, until a person resets
  it.

Every refusal and hold is visible in the run (the step's record says which rule and why) and
logged as a ``guardrail`` event. Dry runs and reads are never held: they change nothing.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import delete, func, insert, select, update

from quell.clock import Clock
from quell.engine.states import RunStatus, StepStatus
from quell.errors import InvalidInput, NotFound
from quell.governance.approvals import (
    ApprovalRule,
    Initiator,
    Requirement,
    load_rules,
    requirement_for,
)
from quell.governance.audit import AuditLog
from quell.ids import new_id
from quell.netaddr import host_network
from quell.sdk.actions import RiskLevel
from quell.store.database import Backend, Database
from quell.store.dialect import upsert
from quell.store.schema import guard_events, guardrails, run_steps, runs

if TYPE_CHECKING:
    from quell.connectors.registry import Registry

log = structlog.get_logger(__name__)

RECHECK = 30.0  # seconds a held write waits before it is checked again
POLICY_TTL = 2.0  # seconds a worker uses the policy it read before reading it again
KILL_SWITCH = "kill_switch"
LIMITS = "limits"
PROTECTED = "protected"
PROTECTED_TAGS = "protected_tags"
ASSET_TAGS = "asset_tags"  # address, network or host name -> its tags
_TAG = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,63}$")
# Shaped like an address or a network (a mistyped one), not like a name: IPv4 (1 to 4 dotted
# numbers, /n), or IPv6 (hex groups with :: or eight of them, /n). An account id (123456789012),
# an ARN, a MAC or host:port are names.
_ADDRESS_SHAPED = re.compile(r"^\d{1,3}(?:\.\d{1,3}){1,3}(?:/\d+)?$|^\d{1,3}(?:\.\d{1,3})*/\d+$")
_IPV6_SHAPED = re.compile(r"^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:/\d+)?$")


def _ipv6_like(text: str) -> bool:
    return "::" in text or text.split("/")[0].count(":") == 7


BREAKER = "breaker"
_BREAKER_OPEN = "breaker:"
_BREAKER_RESET = "breaker-reset:"  # when a person last closed a playbook's circuit
_BREAKER_LOCK = 0x51E12  # orders opening and resetting circuits on PostgreSQL
# Policy changes made in this process: an engine here re-reads the policy at once (engines in
# other processes within POLICY_TTL).
_changes = [0]


def policy_changed() -> None:
    """Make this process's engines read the policy again at once."""
    _changes[0] += 1


class Ruling(StrEnum):
    """What a guardrail says about a write."""

    ALLOW = "allow"
    HOLD = "hold"  # wait and check again (kill switch, open circuit)
    REFUSE = "refuse"  # fail the step (an hourly limit)
    APPROVE = "approve"  # only with a person's approval (a protected asset)


@dataclass(frozen=True)
class Verdict:
    """A guardrail's answer, with the rule and the reason shown in the run."""

    outcome: Ruling
    code: str = ""
    message: str = ""
    requirement: Requirement | None = None  # APPROVE: what the approval takes

    @property
    def error(self) -> dict[str, Any]:
        """As a step's error."""
        return {"code": self.code, "message": self.message, "retryable": False}


ALLOWED = Verdict(Ruling.ALLOW)


@dataclass(frozen=True)
class Limit:
    """At most ``per_hour`` automated executions of an action, or of every action of a risk."""

    per_hour: int
    action: str | None = None
    risk: RiskLevel | None = None

    @property
    def scope(self) -> str:
        """``action:<key>`` or ``risk:<level>``."""
        return f"action:{self.action}" if self.action else f"risk:{self.risk}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"action": self.action, "risk": self.risk, "per_hour": self.per_hour}


@dataclass(frozen=True)
class Breaker:
    """When a playbook's failures open its circuit."""

    failure_rate: float = 0.5
    min_runs: int = 10
    window_minutes: int = 15

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "failure_rate": self.failure_rate,
            "min_runs": self.min_runs,
            "window_minutes": self.window_minutes,
        }


@dataclass(frozen=True)
class Policy:
    """Every guardrail as set now."""

    kill_switch: dict[str, Any] | None = None  # {"reason", "by", "at"} while it is on
    limits: tuple[Limit, ...] = ()
    protected: tuple[str, ...] = ()
    protected_tags: tuple[str, ...] = ()
    asset_tags: dict[str, list[str]] = field(default_factory=dict)
    breaker: Breaker | None = None
    open_circuits: dict[str, dict[str, Any]] = field(default_factory=dict)  # by playbook id
    approval_rules: tuple[ApprovalRule, ...] = ()  # in the order they are tried

    @property
    def empty(self) -> bool:
        """Whether nothing is set (the fast path: no check at all)."""
        return not (
            self.kill_switch
            or self.limits
            or self.protected
            or self.protected_tags
            or self.breaker
            or self.open_circuits
            or self.rules
        )

    @property
    def rules(self) -> tuple[ApprovalRule, ...]:
        """The approval rules that are on."""
        return tuple(rule for rule in self.approval_rules if rule.enabled)

    @property
    def needs_initiator(self) -> bool:
        """Whether a rule asks who started the run."""
        return any(rule.needs_initiator for rule in self.rules)

    def requirement(
        self, *, action: str, risk: RiskLevel, inputs: Any, initiator: Initiator | None
    ) -> Requirement | None:
        """What the approval policy asks of this write (None: nothing)."""
        rules = self.rules
        if not rules or risk is RiskLevel.READ:
            return None
        assets = _assets_named(self.asset_tags, inputs) if self.asset_tags else []
        return requirement_for(rules, action=action, risk=risk, assets=assets, initiator=initiator)

    def protected_entries(self) -> dict[str, str]:
        """Every protected address, network or name, with why: listed, or tagged so."""
        found = dict.fromkeys(self.protected, "listed")
        wanted = set(self.protected_tags)
        for entry, tags in self.asset_tags.items():
            hit = sorted(wanted.intersection(tags))
            if hit and entry not in found:
                found[entry] = f"tagged {', '.join(hit)}"
        return found

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "kill_switch": {"on": self.kill_switch is not None, **(self.kill_switch or {})},
            "limits": [limit.as_dict() for limit in self.limits],
            "protected": list(self.protected),
            "protected_tags": list(self.protected_tags),
            "asset_tags": self.asset_tags,
            "breaker": self.breaker.as_dict() if self.breaker else None,
            "open_circuits": self.open_circuits,
            "approval_rules": [rule.as_dict() for rule in self.approval_rules],
        }


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _protected_hit(protected: Iterable[str], inputs: Any) -> str | None:
    """The protected entry an input names, if any: an address inside a protected network, a
    network overlapping one, or a name equal to one (case-insensitive)."""
    networks = []
    names = set()
    for entry in protected:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            names.add(entry.lower().rstrip("."))
            continue
        networks.append((entry, network, host_network(network)))
    for text in _strings(inputs):
        candidate = text.strip()
        try:  # ::ffff:10.0.0.5 is the host 10.0.0.5, whatever a protected 10.0.0.0/24 says
            value = ipaddress.ip_network(candidate, strict=False)
        except ValueError:
            if candidate.lower().rstrip(".") in names:
                return candidate
            continue
        mapped = host_network(value)
        for entry, network, host in networks:  # as written, and as the hosts they are
            if (value.version == network.version and value.overlaps(network)) or (
                mapped.version == host.version and mapped.overlaps(host)
            ):
                return entry
    return None


def _assets_named(asset_tags: Mapping[str, list[str]], inputs: Any) -> list[list[str]]:
    """The tags of every tagged asset (address, network or name) the inputs name."""
    return [tags for entry, tags in asset_tags.items() if _protected_hit((entry,), inputs)]


def _check_tag(tag: str) -> str:
    text = tag.strip().lower()
    if not _TAG.match(text):
        raise InvalidInput(
            f"{tag!r} is not a tag (lowercase letters, digits, . _ : -)", field="tag"
        )
    return text


def _check_protected_entry(entry: str) -> str:
    """An address, a network or a name, as written. What looks like an address or a
    network but is none (``10.0.0.0/33``, ``10.0.0.256``) is refused: stored as a name, it
    would protect nothing."""
    text = entry.strip()
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        if _ADDRESS_SHAPED.match(text) or (_IPV6_SHAPED.match(text) and _ipv6_like(text)):
            raise InvalidInput(
                f"{entry!r} is not a valid address or network ({exc})", field="entry"
            ) from None
    else:
        return text
    if not text or len(text) > 253 or any(c.isspace() for c in text):
        raise InvalidInput(f"{entry!r} is not an address, a network or a name", field="entry")
    return text  # a name: a host, an account, matched whole (case aside)


class GuardrailService:
    """Reads and changes the policy (people), and checks a write against it (workers)."""

    def __init__(self, db: Database, clock: Clock, *, audit: AuditLog | None = None) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit or AuditLog(db, clock)

    # -- policy ---------------------------------------------------------------------------------

    def policy(self) -> Policy:
        """The policy as stored now."""
        with self.db.read() as conn:
            rows = {row.name: row.value for row in conn.execute(select(guardrails))}
            rules = load_rules(conn)
        limits = tuple(
            Limit(
                per_hour=int(item["per_hour"]),
                action=item.get("action"),
                risk=RiskLevel(item["risk"]) if item.get("risk") else None,
            )
            for item in rows.get(LIMITS, [])
        )
        breaker = Breaker(**rows[BREAKER]) if rows.get(BREAKER) else None
        return Policy(
            approval_rules=rules,
            kill_switch=rows.get(KILL_SWITCH) or None,
            limits=limits,
            protected=tuple(rows.get(PROTECTED, [])),
            protected_tags=tuple(rows.get(PROTECTED_TAGS, [])),
            asset_tags={key: list(value) for key, value in rows.get(ASSET_TAGS, {}).items()},
            breaker=breaker,
            open_circuits={
                name[len(_BREAKER_OPEN) :]: value
                for name, value in rows.items()
                if name.startswith(_BREAKER_OPEN)
            },
        )

    def _audit(self, by: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
        self.audit.record(by, f"guardrail.{action}", subject, detail)

    def _changed(self) -> None:
        _changes[0] += 1

    def _put(self, name: str, value: Any, by: str) -> None:
        row = {"name": name, "value": value, "updated_by": by, "updated_at": self.clock.now()}
        statement = upsert(
            self.db.backend, guardrails, keys=["name"], update=["value", "updated_by", "updated_at"]
        )
        with self.db.write() as conn:
            conn.execute(statement.values(**row))
        self._changed()

    def _drop(self, name: str) -> bool:
        with self.db.write() as conn:
            gone = conn.execute(delete(guardrails).where(guardrails.c.name == name)).rowcount
        self._changed()
        return bool(gone)

    def kill_switch(self, on: bool, *, by: str, reason: str = "") -> int:
        """Turn the kill switch on or off; off wakes every held run at once. The number of
        runs woken."""
        if on:
            value = {
                "reason": reason or "no reason given",
                "by": by,
                "at": self.clock.now().isoformat(),
            }
            self._put(KILL_SWITCH, value, by)
            log.warning("guardrail", rule="kill_switch", on=True, by=by, reason=value["reason"])
            self._audit(by, "kill_switch_on", None, {"reason": value["reason"]})
            return 0
        self._drop(KILL_SWITCH)
        log.warning("guardrail", rule="kill_switch", on=False, by=by)
        woken = self.release_held()
        self._audit(by, "kill_switch_off", None, {"released_runs": woken})
        return woken

    def add_limit(
        self,
        per_hour: int,
        *,
        by: str,
        action: str | None = None,
        risk: str | None = None,
        known: Registry | None = None,
    ) -> Limit:
        """Set the hourly limit of an action or of a risk (replacing one of the same scope);
        with ``known``, the action must be one of its actions."""
        if (action is None) == (risk is None):
            raise InvalidInput("a limit is for one action (--action) or one risk (--risk)")
        if action is not None and known is not None:
            known.check_action(action)
        if per_hour < 0:
            raise InvalidInput("per_hour must be 0 or more", field="per_hour")
        try:
            level = RiskLevel(risk) if risk is not None else None
        except ValueError:
            raise InvalidInput(
                f"unknown risk {risk!r}; risks are: {', '.join(RiskLevel)}", field="risk"
            ) from None
        limit = Limit(per_hour=per_hour, action=action, risk=level)
        kept = [item for item in self.policy().limits if item.scope != limit.scope]
        self._put(LIMITS, [item.as_dict() for item in [*kept, limit]], by)
        self._audit(by, "limit_set", limit.scope, limit.as_dict())
        return limit

    def remove_limit(self, *, by: str, action: str | None = None, risk: str | None = None) -> None:
        """Remove the limit of an action or of a risk."""
        scope = f"action:{action}" if action else f"risk:{risk}"
        limits = self.policy().limits
        kept = [item for item in limits if item.scope != scope]
        if len(kept) == len(limits):
            raise NotFound(f"no limit for {scope}", field="limit")
        self._put(LIMITS, [item.as_dict() for item in kept], by)
        self._audit(by, "limit_removed", scope, {})

    def protect(self, entries: Iterable[str], *, by: str) -> tuple[str, ...]:
        """Add protected assets; the whole list."""
        current = list(self.policy().protected)
        for entry in entries:
            checked = _check_protected_entry(entry)
            if checked not in current:
                current.append(checked)
        self._put(PROTECTED, current, by)
        self._audit(by, "protected", None, {"protected": current})
        return tuple(current)

    def unprotect(self, entries: Iterable[str], *, by: str) -> tuple[str, ...]:
        """Remove protected assets; the whole list."""
        gone = {entry.strip() for entry in entries}
        current = [entry for entry in self.policy().protected if entry not in gone]
        self._put(PROTECTED, current, by)
        self._audit(by, "unprotected", None, {"protected": current, "removed": sorted(gone)})
        return tuple(current)

    def protect_tags(
        self, tags: Iterable[str], *, by: str, remove: bool = False
    ) -> tuple[str, ...]:
        """Protect (or, with ``remove``, stop protecting) every asset carrying these tags."""
        current = list(self.policy().protected_tags)
        for tag in tags:
            checked = _check_tag(tag)
            if remove and checked in current:
                current.remove(checked)
            elif not remove and checked not in current:
                current.append(checked)
        self._put(PROTECTED_TAGS, current, by)
        self._audit(by, "protected_tags", None, {"protected_tags": current})
        return tuple(current)

    def tag_asset(self, entry: str, tags: Iterable[str], *, by: str) -> dict[str, list[str]]:
        """Give an address, network or host name its tags (replacing any it had; none
        removes it); the whole asset list."""
        checked = _check_protected_entry(entry)
        assets = dict(self.policy().asset_tags)
        given = sorted({_check_tag(tag) for tag in tags})
        if given:
            assets[checked] = given
        else:
            assets.pop(checked, None)
        self._put(ASSET_TAGS, assets, by)
        self._audit(by, "asset_tags", checked, {"tags": given})
        return assets

    def set_breaker(self, breaker: Breaker | None, *, by: str) -> None:
        """Turn the circuit breaker on with these thresholds, or off (None)."""
        if breaker is None:
            self._drop(BREAKER)
            self._audit(by, "breaker_off", None, {})
            return
        if not 0 < breaker.failure_rate <= 1 or breaker.min_runs < 1 or breaker.window_minutes < 1:
            raise InvalidInput("failure_rate is in (0, 1], min_runs and window_minutes at least 1")
        self._put(BREAKER, breaker.as_dict(), by)
        self._audit(by, "breaker_set", None, breaker.as_dict())

    def reset_breaker(self, playbook_id: str, *, by: str) -> int:
        """Close a playbook's open circuit; its held runs go on at once. Runs woken."""
        # One transaction: the reset's time is set before the open circuit goes, so a check
        # running meanwhile counts only failures after it and cannot open it again at once.
        now = self.clock.now()
        reset = upsert(
            self.db.backend, guardrails, keys=["name"], update=["value", "updated_by", "updated_at"]
        ).values(
            name=_BREAKER_RESET + playbook_id,
            value={"at": now.isoformat()},
            updated_by=by,
            updated_at=now,
        )
        with self.db.write() as conn:
            if self.db.backend is Backend.POSTGRESQL:
                conn.execute(select(func.pg_advisory_xact_lock(_BREAKER_LOCK)))
            conn.execute(reset)
            gone = conn.execute(
                delete(guardrails).where(guardrails.c.name == _BREAKER_OPEN + playbook_id)
            ).rowcount
        self._changed()
        if not gone:
            raise NotFound(f"the circuit of playbook {playbook_id!r} is not open", field="playbook")
        log.warning("guardrail", rule="circuit_breaker", playbook=playbook_id, reset_by=by)
        woken = self.release_held()
        self._audit(by, "circuit_reset", playbook_id, {"released_runs": woken})
        return woken

    def release_held(self) -> int:
        """Wake every run whose write is held, so it is checked again now."""
        now = self.clock.now()
        held = (
            select(run_steps.c.run_id)
            .where(
                run_steps.c.key.like("%#guard"),
                run_steps.c.status == StepStatus.WAITING_TIMER.value,
            )
            .distinct()
        )
        with self.db.write() as conn:
            done = conn.execute(
                update(runs)
                .where(runs.c.status == RunStatus.WAITING.value, runs.c.id.in_(held))
                .values(wake_at=now, updated_at=now)
            )
            return int(done.rowcount or 0)

    # -- checking -------------------------------------------------------------------------------

    def check(
        self,
        policy: Policy,
        *,
        action: str,
        risk: RiskLevel,
        inputs: Any,
        run_id: str | None,
        playbook_id: str,
        initiator: Initiator | None = None,
        approved: bool = False,
    ) -> Verdict:
        """What the policy says about this write now (and, when it is allowed and limited,
        counts it: the check and the count are one transaction, so no two workers pass one
        limit together). ``approved``: people approved this write already, so only the holds
        and the limits are left to check (an approved write counts against its limit too)."""
        if policy.kill_switch:
            reason = policy.kill_switch.get("reason", "")
            return Verdict(
                Ruling.HOLD, "kill_switch", f"the kill switch is on ({reason}): writes are held"
            )
        if playbook_id in policy.open_circuits or self._trips(policy, playbook_id):
            return Verdict(
                Ruling.HOLD,
                "circuit_open",
                f"playbook {playbook_id} failed too often: its circuit is open until reset",
            )
        required = (
            None
            if approved
            else policy.requirement(action=action, risk=risk, inputs=inputs, initiator=initiator)
        )
        protected = policy.protected_entries() if not approved else {}
        hit = _protected_hit(protected, inputs) if protected else None
        if hit is not None:
            why = protected.get(hit, "listed")
            reason = "" if why == "listed" else f" ({why})"
            return Verdict(
                Ruling.APPROVE,
                "protected_asset",
                f"{hit} is protected{reason}: a person must approve",
                required,
            )
        if required is not None:
            return Verdict(
                Ruling.APPROVE,
                "approval_policy",
                f"approval rule {required.rule} asks for {required.approvals} approval(s)",
                required,
            )
        limits = [item for item in policy.limits if item.action == action or item.risk is risk]
        if limits:
            return self._count(limits, run_id)
        return ALLOWED

    def _trips(self, policy: Policy, playbook_id: str) -> bool:
        """Whether the playbook's recent failures open its circuit now (and open it)."""
        breaker = policy.breaker
        if breaker is None:
            return False
        since = self.clock.now() - timedelta(minutes=breaker.window_minutes)
        ended = runs.c.finished_at >= since
        with self.db.write() as conn:
            if self.db.backend is Backend.POSTGRESQL:
                conn.execute(select(func.pg_advisory_xact_lock(_BREAKER_LOCK)))
            # Read here, not from the cached policy: a reset a moment ago must count.
            reset_row = conn.execute(
                select(guardrails.c.value).where(guardrails.c.name == _BREAKER_RESET + playbook_id)
            ).scalar()
            reset = datetime.fromisoformat(reset_row["at"]) if reset_row else None
            if reset is not None and reset >= since:
                ended = runs.c.finished_at > reset  # what ended before the reset is forgotten
            counts: dict[str, int] = dict(
                conn.execute(
                    select(runs.c.status, func.count())
                    .where(runs.c.playbook_id == playbook_id, ended)
                    .group_by(runs.c.status)
                ).all()
            )
            total = sum(counts.values())
            failed = counts.get(RunStatus.FAILED.value, 0)
            if total < breaker.min_runs or failed / total < breaker.failure_rate:
                return False
            now = self.clock.now()
            conn.execute(
                upsert(
                    self.db.backend, guardrails, keys=["name"],
                    update=["value", "updated_by", "updated_at"],
                ).values(
                    name=_BREAKER_OPEN + playbook_id,
                    value={"since": now.isoformat(), "failed": failed, "ended": total},
                    updated_by="circuit_breaker",
                    updated_at=now,
                )
            )  # fmt: skip
        log.warning(
            "guardrail", rule="circuit_breaker", playbook=playbook_id, failed=failed, ended=total
        )
        self._audit(
            "circuit_breaker", "circuit_open", playbook_id, {"failed": failed, "ended": total}
        )
        return True

    def _count(self, limits: list[Limit], run_id: str | None) -> Verdict:
        now = self.clock.now()
        since = now - timedelta(hours=1)
        with self.db.write() as conn:
            if self.db.backend is Backend.POSTGRESQL:  # one checker at a time, across workers
                conn.execute(select(func.pg_advisory_xact_lock(0x51E11)))
            for limit in limits:
                used = conn.execute(
                    select(func.count())
                    .select_from(guard_events)
                    .where(guard_events.c.scope == limit.scope, guard_events.c.at >= since)
                ).scalar_one()
                if used >= limit.per_hour:
                    return Verdict(
                        Ruling.REFUSE,
                        "guardrail_limit",
                        f"{limit.scope} reached its limit of {limit.per_hour} executions per hour",
                    )
            conn.execute(
                insert(guard_events),
                [
                    {"id": new_id("gev"), "scope": limit.scope, "at": now, "run_id": run_id}
                    for limit in limits
                ],
            )
            conn.execute(delete(guard_events).where(guard_events.c.at < since - timedelta(hours=1)))
        return ALLOWED


class Guardrails:
    """The engine's side: the policy cached for :data:`POLICY_TTL`, checks off the loop."""

    def __init__(self, service: GuardrailService) -> None:
        self.service = service
        self._policy: Policy | None = None
        self._read_at = 0.0
        self._seen = -1  # the policy changes of this process it has read

    async def _current(self, *, fresh: bool = False) -> Policy:
        import asyncio

        now = time.monotonic()
        stale = self._seen != _changes[0] or now - self._read_at > POLICY_TTL
        if fresh or self._policy is None or stale:
            self._seen = _changes[0]
            self._policy = await asyncio.to_thread(self.service.policy)
            self._read_at = now
        return self._policy

    def nothing_set(self) -> bool:
        """Whether the policy read less than :data:`POLICY_TTL` ago is empty (every write
        passes: the check needs no await at all)."""
        policy = self._policy
        return (
            policy is not None
            and policy.empty
            and self._seen == _changes[0]
            and time.monotonic() - self._read_at <= POLICY_TTL
        )

    async def requirement(
        self,
        *,
        action: str,
        risk: RiskLevel,
        inputs: Any,
        initiator: Callable[[], Awaitable[Initiator]],
    ) -> Requirement | None:
        """What the approval policy asks of a write (``initiator`` is asked only when a rule
        needs to know who started the run)."""
        policy = await self._current()
        if not policy.rules:
            return None
        who = await initiator() if policy.needs_initiator else None
        return policy.requirement(action=action, risk=risk, inputs=inputs, initiator=who)

    async def check(
        self,
        *,
        action: str,
        risk: RiskLevel,
        inputs: Any,
        run_id: str,
        playbook_id: str,
        initiator: Callable[[], Awaitable[Initiator]] | None = None,
        approved: bool = False,
    ) -> Verdict:
        """The verdict on a write a run is about to make (``approved``: people approved it)."""
        import asyncio

        policy = await self._current()
        if policy.empty:
            return ALLOWED
        if policy.kill_switch or policy.open_circuits:
            # A hold lasts a while: make sure it is not a switch turned off a moment ago
            # (turning it off wakes the held runs, which must then go on).
            policy = await self._current(fresh=True)
        who = await initiator() if initiator is not None and policy.needs_initiator else None
        verdict = await asyncio.to_thread(
            self.service.check,
            policy,
            action=action,
            risk=risk,
            inputs=inputs,
            run_id=run_id,
            playbook_id=playbook_id,
            initiator=who,
            approved=approved,
        )
        if verdict.outcome is not Ruling.ALLOW:
            log.warning(
                "guardrail",
                rule=verdict.code,
                outcome=verdict.outcome.value,
                action=action,
                run=run_id,
                playbook=playbook_id,
            )
        return verdict


def recheck_at(now: datetime) -> datetime:
    """When a held write is checked again."""
    return now + timedelta(seconds=RECHECK)


__all__ = [
    "ALLOWED",
    "Breaker",
    "GuardrailService",
    "Guardrails",
    "Limit",
    "Policy",
    "Ruling",
    "Verdict",
    "recheck_at",
]
