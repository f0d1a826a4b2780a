"""Quell as an OpenC2 consumer: a checked command becomes a connector action, and the action's
outcome an OpenC2 response.

What is answered, and how:

* ``query features`` is answered by Quell itself: ``versions`` ``["1.0"]``, ``profiles``
  ``["slpf"]``, ``pairs`` (``query features`` plus every SLPF pair an installed connector
  implements: the pairs in ``nftables.OPENC2_PAIRS``, and those of actions declaring
  ``openc2=(action, target, "slpf")``), and ``rate_limit`` (commands per minute) when the
  connectors behind the pairs declare a rate; it is left out when none does. An empty
  ``features`` list is a ping: ``200`` without results.
* SLPF ``deny`` and ``allow`` of ``ipv4_net``, ``ipv6_net``, ``ipv4_connection`` and
  ``ipv6_connection`` call ``nftables.deny`` / ``nftables.allow`` (or another connector's
  action declaring the pair, which then takes the same input: the target under its OpenC2 name,
  ``direction``, ``drop_process``, ``expires_in``); the response carries
  ``results.slpf.rule_number``. ``delete slpf:rule_number`` calls ``nftables.delete``.
* The actuator: ``actuator.slpf.asset_id`` names the connector instance to use; without one,
  the connector's default instance is used. ``hostname``, ``named_group`` and ``asset_tuple``
  cannot be resolved to an instance, so a command naming them is answered ``501`` rather than
  carried out on a firewall that may not be the one meant.
* Arguments: ``duration`` (ms) or ``stop_time`` becomes ``expires_in`` (seconds, rounded up;
  at most 30 days), enforced by the kernel. A ``start_time`` in the future is answered
  ``501`` (nothing is scheduled); a window that ended before the command arrived is answered
  ``200`` with nothing changed. ``slpf.drop_process`` ``none``/``reject`` pass through,
  ``false_ack`` is ``501``; ``slpf.direction`` ``ingress``/``egress`` pass through, ``both``
  is ``501`` for a net target (one nft rule matches one side; when the direction is left out
  the connector's default, ingress, applies); ``slpf.insert_rule`` is ``501`` (nft handles are
  not positions); ``slpf.persistent`` is accepted as is (the rules live in the kernel's ruleset
  until deleted or expired; keeping them over a reboot is the host's business).
* Any other valid command is answered ``501`` naming the pairs that are implemented.
* A failed action is ``500`` with its message, ``404`` when the action says the target does not
  exist (no such rule), ``400`` when the actuator refuses the input.

Every command is carried out before the answer is sent, whatever ``response_requested`` says:
``complete`` and ``status`` get the full response; ``ack`` gets ``102`` (with the results, as
the command is done) unless it failed, in which case the failure is sent instead of hiding it
behind an acknowledgement; ``none`` gets no OpenC2 response at all (the route answers HTTP 200
with an empty body).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from quell.connectors.nftables import MAX_EXPIRY, OPENC2_PAIRS
from quell.engine.actions import parse_rate
from quell.errors import NotFound
from quell.openc2.language import (
    LANGUAGE_VERSION,
    PROFILE,
    SLPF_PAIRS,
    Command,
    SlpfArgs,
)
from quell.sdk.errors import ActionError, TargetNotFound

if TYPE_CHECKING:
    from quell.connectors.registry import Registry
    from quell.runtime import Runtime

log = structlog.get_logger(__name__)

NET_TARGETS = ("ipv4_net", "ipv6_net")
_FUTURE_TOLERANCE_MS = 5_000  # a producer's clock may run a little ahead of ours
_UNRESOLVABLE = ("hostname", "named_group", "asset_tuple")


@dataclass(frozen=True)
class Reply:
    """An OpenC2 response to send."""

    status: int
    status_text: str | None = None
    results: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        """The response as JSON data."""
        data: dict[str, Any] = {"status": self.status}
        if self.status_text:
            data["status_text"] = self.status_text
        if self.results:
            data["results"] = self.results
        return data


@dataclass(frozen=True)
class Plan:
    """A command turned into one action call, not yet made."""

    action: str  # the OpenC2 action, e.g. "deny"
    target: str  # the OpenC2 target type, e.g. "ipv4_net"
    key: str  # the connector action, e.g. "nftables.deny"
    inputs: dict[str, Any] = field(default_factory=dict)
    instance: str | None = None
    writes: bool = True


def slpf_routes(registry: Registry) -> dict[tuple[str, str], list[str]]:
    """For each SLPF (action, target) pair an installed connector implements, its action keys,
    the preferred first (nftables, then the others by key)."""
    routes: dict[tuple[str, str], list[str]] = {}

    def add(pair: tuple[str, str], key: str) -> None:
        if key not in registry.actions or pair[1] not in SLPF_PAIRS.get(pair[0], ()):
            return
        keys = routes.setdefault(pair, [])
        if key not in keys:
            keys.append(key)

    if "nftables" in registry.connectors:
        for pair, name in OPENC2_PAIRS.items():
            add(pair, f"nftables.{name}")
    for key, definition in sorted(registry.actions.items()):
        declared = definition.meta.openc2
        if declared is not None and declared[2] == PROFILE:
            add((declared[0], declared[1]), key)
    return routes


def supported_pairs(registry: Registry) -> dict[str, list[str]]:
    """The ``pairs`` feature: ``query features`` and every pair with an action behind it."""
    routes = slpf_routes(registry)
    pairs: dict[str, list[str]] = {"query": ["features"]}
    for action, targets in SLPF_PAIRS.items():
        implemented = [target for target in targets if (action, target) in routes]
        if implemented:
            pairs.setdefault(action, [])
            pairs[action] += [t for t in implemented if t not in pairs[action]]
    return pairs


def rate_limit(registry: Registry) -> float | None:
    """Commands per minute the tightest declared rate behind the pairs allows, or None."""
    rates: list[float] = []
    for keys in slpf_routes(registry).values():
        for key in keys:
            definition = registry.actions[key]
            for text in (definition.connector.rate, definition.meta.rate):
                if text:
                    rates.append(parse_rate(text) * 60)
    return round(min(rates), 3) if rates else None


def _describe_pairs(pairs: dict[str, list[str]]) -> str:
    return ", ".join(
        f"{action} {target}" for action, targets in pairs.items() for target in targets
    )


class Consumer:
    """Answers OpenC2 commands with the runtime's connectors."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.registry = runtime.registry

    # -- deciding --------------------------------------------------------------------------

    async def plan(self, command: Command) -> Plan | Reply:
        """The action call the command maps to, or the reply when there is nothing to call."""
        action, target = command.action, command.target.kind
        if (action, target) == ("query", "features"):
            return self.features(command.target.features or [])
        keys = slpf_routes(self.registry).get((action, target))
        if not keys:
            pairs = _describe_pairs(supported_pairs(self.registry))
            return Reply(
                501, f"{action} {target} is not implemented by this consumer (it implements: "
                f"{pairs})",
            )  # fmt: skip
        chosen = await self._actuator(command, keys)
        if isinstance(chosen, Reply):
            return chosen
        key, instance = chosen
        if action == "delete":
            return self._delete(command, key, instance)
        return self._rule(command, key, instance)

    def features(self, requested: Sequence[str]) -> Reply:
        """The answer to ``query features``: only what was asked for."""
        results: dict[str, Any] = {}
        for feature in requested:
            if feature == "versions":
                results["versions"] = [LANGUAGE_VERSION]
            elif feature == "profiles":
                results["profiles"] = [PROFILE]
            elif feature == "pairs":
                results["pairs"] = supported_pairs(self.registry)
            elif feature == "rate_limit":
                limit = rate_limit(self.registry)
                if limit is not None:
                    results["rate_limit"] = limit
        return Reply(200, results=results or None)

    async def _actuator(self, command: Command, keys: list[str]) -> tuple[str, str | None] | Reply:
        """The action key and instance the actuator names (the default without a name)."""
        specifiers = command.actuator.slpf if command.actuator is not None else None
        if specifiers is None:
            return keys[0], None
        given = specifiers.present()
        unresolvable = [name for name in _UNRESOLVABLE if name in given]
        if unresolvable:
            return Reply(
                501,
                f"actuator.slpf.{unresolvable[0]} is not supported: Quell picks the actuator by "
                "actuator.slpf.asset_id, the name of a configured connector instance",
            )
        if specifiers.asset_id is None:
            return keys[0], None
        name = specifiers.asset_id
        try:
            instance = await asyncio.to_thread(self.runtime.connector_instances.get, name)
        except NotFound:
            return Reply(404, f"actuator.slpf.asset_id: no connector instance named {name!r}")
        for key in keys:
            if self.registry.actions[key].connector.name == instance.connector:
                return key, instance.name
        pair = f"{command.action} {command.target.kind}"
        return Reply(
            404,
            f"actuator.slpf.asset_id: instance {name!r} is a {instance.connector} connector, "
            f"which does not implement {pair}",
        )

    def _delete(self, command: Command, key: str, instance: str | None) -> Plan | Reply:
        number = command.target.rule_number
        if number is None or number < 1:
            return Reply(404, f"no rule {number}")
        writes = not self.registry.actions[key].is_read
        return Plan("delete", command.target.kind, key, {"rule_number": number}, instance, writes)

    def _rule(self, command: Command, key: str, instance: str | None) -> Plan | Reply:
        target = command.target.kind
        inputs: dict[str, Any] = {target: command.target.value}
        args = command.args
        slpf = args.slpf if args is not None else None
        if slpf is not None:
            refused = self._slpf_args(command.action, target, slpf, inputs)
            if refused is not None:
                return refused
        if args is not None:
            expiry = self._expiry(args.start_time, args.stop_time, args.duration)
            if isinstance(expiry, Reply):
                return expiry
            if expiry is not None:
                inputs["expires_in"] = expiry
        writes = not self.registry.actions[key].is_read
        return Plan(command.action, target, key, inputs, instance, writes)

    @staticmethod
    def _slpf_args(
        action: str, target: str, slpf: SlpfArgs, inputs: dict[str, Any]
    ) -> Reply | None:
        if slpf.insert_rule is not None:
            return Reply(
                501, "args.slpf.insert_rule is not supported: rule numbers here are nft handles, "
                "not positions",
            )  # fmt: skip
        if slpf.direction is not None:
            if slpf.direction != "both":
                inputs["direction"] = slpf.direction
            elif target in NET_TARGETS:
                return Reply(
                    501, "args.slpf.direction 'both' is not supported for a net target: send one "
                    "command for ingress and one for egress",
                )  # fmt: skip
        if action == "deny" and slpf.drop_process is not None:
            if slpf.drop_process == "false_ack":
                return Reply(501, "args.slpf.drop_process 'false_ack' is not supported")
            inputs["drop_process"] = slpf.drop_process
        return None

    def _expiry(
        self, start: int | None, stop: int | None, duration: int | None
    ) -> int | Reply | None:
        """Seconds until the rule ends (None: never), or the reply when it cannot be made."""
        now = int(self.runtime.clock.now().timestamp() * 1000)
        if start is not None and start > now + _FUTURE_TOLERANCE_MS:
            return Reply(
                501, f"args.start_time {start} is in the future; scheduling is not supported, "
                "commands take effect when they arrive",
            )  # fmt: skip
        if stop is not None:
            end = stop
        elif duration is not None:
            end = (start if start is not None else now) + duration
        else:
            return None
        left = end - now
        if left <= 0:
            ended = datetime.fromtimestamp(end / 1000, UTC).isoformat(timespec="milliseconds")
            return Reply(200, f"the command's time window ended at {ended}; nothing was changed")
        seconds = math.ceil(left / 1000)
        if seconds > MAX_EXPIRY:
            return Reply(
                501, f"the rule would last {seconds} s; rules may last at most {MAX_EXPIRY} s "
                "(30 days), or forever without stop_time and duration",
            )  # fmt: skip
        return seconds

    # -- doing -----------------------------------------------------------------------------

    async def execute(self, plan: Plan, *, actor: str, dry_run: bool = False) -> Reply:
        """Call the planned action, as ``actor`` (``openc2:<caller>``, as written to the audit
        trail); its outcome as a reply."""
        if not dry_run:
            refusal = await self._guarded(plan, actor)
            if refusal is not None:
                return refusal
        runner = self.runtime.action_runner(actor)
        try:
            output = await runner.run_once(
                plan.key, plan.inputs, dry_run=dry_run, instance=plan.instance, actor=actor
            )
        except ActionError as exc:
            status = 404 if isinstance(exc, TargetNotFound) else 500
            if exc.code == "invalid_input":
                status = 400
            elif exc.code == "connector_config":  # no instance to act on, or a broken one
                status = 501
            log.info("openc2_action_failed", action=plan.key, code=exc.code, status=status)
            return Reply(status, exc.message)
        finally:
            await runner.aclose()
        if dry_run:
            return Reply(200, f"dry run of {plan.key}: nothing was changed")
        if plan.action == "delete":
            return Reply(200, f"rule {plan.inputs['rule_number']} deleted")
        number = output.get("rule_number")
        if isinstance(number, int) and not isinstance(number, bool):
            return Reply(200, results={PROFILE: {"rule_number": number}})
        return Reply(200)

    async def _guarded(self, plan: Plan, actor: str) -> Reply | None:
        """The guardrails on a command from another system (automation): the kill switch or
        an hourly limit answer 503 (try later), a protected asset 403 (it needs a person's
        approval, which a command cannot wait for). None: go on."""
        import asyncio

        from quell.engine.guardrails import Ruling
        from quell.governance.approvals import Initiator

        registry = self.runtime.registry
        definition = registry.actions.get(plan.key)
        if definition is None or definition.is_read:
            return None
        guardrails = self.runtime.guardrails
        policy = await asyncio.to_thread(guardrails.policy)
        if policy.empty:
            return None
        verdict = await asyncio.to_thread(
            lambda: guardrails.check(
                policy, action=plan.key, risk=definition.meta.risk, inputs=plan.inputs,
                run_id=None, playbook_id=actor, initiator=Initiator.AUTOMATION,
            )
        )  # fmt: skip
        if verdict.outcome is Ruling.ALLOW:
            return None
        log.warning("openc2_guardrail", action=plan.key, rule=verdict.code, actor=actor)
        await asyncio.to_thread(
            guardrails.audit.record,
            actor,
            f"guardrail.{verdict.outcome.value}",
            plan.key,
            {"rule": verdict.code, "message": verdict.message, "inputs": plan.inputs},
        )
        status = 403 if verdict.outcome is Ruling.APPROVE else 503
        return Reply(status, f"{verdict.code}: {verdict.message}")

    @staticmethod
    def shape(reply: Reply, response_requested: str) -> Reply | None:
        """The reply the producer asked for: None for ``none`` (but a refused request, 400 or
        403, is always answered), 102 for a successful ``ack``."""
        if response_requested == "none" and reply.status not in (400, 403):
            return None
        if response_requested == "ack" and reply.status == 200:
            return Reply(102, "command received and carried out", reply.results)
        return reply


__all__ = [
    "Consumer",
    "Plan",
    "Reply",
    "rate_limit",
    "slpf_routes",
    "supported_pairs",
]
