"""Calling connector actions: instances, inputs, secrets, limits, timeouts and reconcile.

The engine hands :class:`ActionRunner` an action key, the filled-in inputs and the call's
identity; the runner validates the inputs against the action's model (a bad input fails the
step with the field named, it never reaches the peer), holds the action's concurrency and rate
limits (in the database, so that they bind every worker: see :mod:`quell.engine.limits`), calls
the method with an :class:`~quell.sdk.ActionContext`, and returns the output as plain JSON
data. Anything an action raises that is not an :class:`~quell.sdk.ActionError` becomes one (not
retryable) with only the exception's type in the message: a connector's bug fails its step,
never the worker.

Secrets come from the environment, ``QUELL_CONNECTOR_<CONNECTOR>_<SECRET>`` (for example
``QUELL_CONNECTOR_VIRUSTOTAL_API_KEY``), as :class:`~quell.sdk.SecretValue`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError

from quell.connectors.instances import InstanceService, Resolved, default_config
from quell.connectors.registry import ActionDef, Registry
from quell.engine.containment import ContainmentService, expiry_of, revert_plan
from quell.engine.limits import SharedLimits
from quell.errors import QuellError
from quell.governance.audit import AuditLog
from quell.ids import new_id
from quell.sdk import (
    ActionContext,
    ActionError,
    Connector,
    Landed,
    Reconciliation,
    RiskLevel,
    SecretValue,
)
from quell.sdk.errors import PermanentError, TransientError
from quell.sdk.http import OutboundPolicy, guard

log = structlog.get_logger(__name__)
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_SLOT_HOLD = timedelta(minutes=2)  # a cluster slot's hold, extended while its call runs
_RESOLVE_TTL = 5.0  # seconds an instance's configuration is used before it is read again
_RETIRE_AFTER = 120.0  # seconds a replaced instance lives on for the calls that hold it


def _env_name(connector: str, secret: str) -> str:
    return f"QUELL_CONNECTOR_{connector}_{secret}".upper().replace(".", "_").replace("-", "_")


class EnvSecrets:
    """Connector secrets from environment variables (SecretCatalog for validation too)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def provides(self, connector: str, secret: str) -> bool:
        """Whether the secret is configured."""
        return bool(self.environ.get(_env_name(connector, secret)))

    def for_connector(self, connector: type[Connector]) -> dict[str, SecretValue]:
        """The connector's configured secrets."""
        found = {}
        for name in connector.secrets:
            value = self.environ.get(_env_name(connector.name, name))
            if value:
                found[name] = SecretValue(value)
        return found


class _Bucket:
    """A token bucket: ``rate`` calls per second, bursts up to ``capacity``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """Take a token; the seconds to wait first (0 when one was there)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def parse_rate(text: str) -> float:
    """``"10/s"``, ``"100/m"``, ``"1000/h"`` as calls per second."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a rate; use e.g. 10/s, 100/m or 1000/h")
    per = {"s": 1.0, "m": 60.0, "h": 3600.0}[match[2]]
    return float(match[1]) / per


DataPolicy = Callable[[ActionDef, BaseModel | None, Resolved], Awaitable[None]]
"""Raises an ActionError when ``params`` may not go to the resolved instance."""


class ActionRunner:
    """Calls actions for the engine; one connector instance per connector, one HTTP pool."""

    def __init__(
        self,
        registry: Registry,
        *,
        secrets: EnvSecrets | None = None,
        outbound: OutboundPolicy | None = None,
        limits: SharedLimits | None = None,
        instances: InstanceService | None = None,
        containments: ContainmentService | None = None,
        audit: AuditLog | None = None,
        data_policy: DataPolicy | None = None,
    ) -> None:
        self.registry = registry
        # Asked before every call with the resolved instance: may refuse to let the inputs
        # leave (quell.intel.enrich.TlpGate keeps TLP-marked values from outside services).
        self.data_policy = data_policy
        # Where calls made by hand record what they contained (runs record it in their journal).
        self.containments = containments
        self.audit = audit  # where calls made by hand are recorded
        # Configured instances (settings and sealed secrets in the database); without them,
        # every connector runs unconfigured, with secrets from the environment only.
        self.instances = instances
        self._resolved: dict[tuple[str, str | None], tuple[float, Resolved]] = {}
        self.secrets = secrets or EnvSecrets()
        self.outbound = outbound or OutboundPolicy()
        # Caps and rates in the database bind every worker; without it, this process only.
        self.limits = limits
        self._instances: dict[tuple[str, str], Connector] = {}  # by connector and instance
        self._http: aiohttp.ClientSession | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._gates: dict[str, list[_Gate]] = {}  # by action key: its limits, built once
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired: set[Connector] = set()  # replaced instances not closed yet

    def action(self, key: str) -> ActionDef:
        """The action ``key`` (NotFound when unknown)."""
        return self.registry.get(key)

    def _cached(self, definition: ActionDef, instance: str | None) -> Resolved | None:
        cached = self._resolved.get((definition.connector.name, instance))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    async def resolve(self, definition: ActionDef, instance: str | None = None) -> Resolved:
        """The instance an action of ``definition`` runs against (read again every few
        seconds, so a changed configuration takes effect without a restart); PermanentError
        when it cannot be (an unknown or disabled instance, a connector that needs one)."""
        cached = self._cached(definition, instance)
        if cached is not None:
            return cached
        key = (definition.connector.name, instance)
        now = time.monotonic()
        try:
            if self.instances is None:
                resolved = Resolved(
                    definition.connector.name, default_config(definition.connector), {}, False
                )
            else:
                resolved = await asyncio.to_thread(
                    self.instances.resolve, definition.connector, instance
                )
        except QuellError as exc:
            raise PermanentError(exc.message, code="connector_config") from None
        self._resolved[key] = (now + _RESOLVE_TTL, resolved)
        return resolved

    async def _instance(self, definition: ActionDef, resolved: Resolved) -> Connector:
        key = (definition.connector.name, resolved.name)
        found = self._instances.get(key)
        if found is None or found.config != resolved.config:
            old, found = found, definition.connector(resolved.config)
            self._instances[key] = found  # swapped before any await: one new instance
            if old is not None:  # its configuration changed: closed once its calls are done
                self._retire(old)
        return found

    def _retire(self, connector: Connector) -> None:
        """Close a replaced instance later, after calls already holding it have ended."""

        async def close() -> None:
            await asyncio.sleep(_RETIRE_AFTER)
            self._retired.discard(connector)
            try:
                await connector.aclose()
            except Exception as exc:  # noqa: BLE001 - a connector's close fails nothing else
                log.warning("connector_close_failed", error=type(exc).__name__)

        self._retired.add(connector)
        task = asyncio.get_running_loop().create_task(close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = guard(self.outbound, keep_cookies=False)  # shared by every run
        return self._http

    async def context(
        self,
        definition: ActionDef,
        *,
        run_id: str,
        step_key: str,
        attempt: int,
        idempotency_key: str,
        dry_run: bool,
        instance: str | None = None,
        extra_secrets: Mapping[str, SecretValue] | None = None,
    ) -> ActionContext:
        """The context an attempt is called with: the instance's secrets over the
        environment's, and ``extra_secrets`` (a step's own credential) over both;
        PermanentError when the instance cannot be resolved."""
        resolved = self._cached(definition, instance) or await self.resolve(definition, instance)
        secrets = self.secrets.for_connector(definition.connector)
        if resolved.secrets:
            secrets = {**secrets, **resolved.secrets}
        if extra_secrets:
            secrets = {**secrets, **extra_secrets}
        return ActionContext(
            run_id=run_id,
            step_id=step_key,
            attempt=attempt,
            idempotency_key=idempotency_key,
            dry_run=dry_run,
            secrets=secrets,
            http=self._client(),
            log_context={"action": definition.key, "run": run_id, "step": step_key},
            instance=resolved.name if resolved.configured else "",
        )

    def validate(self, definition: ActionDef, inputs: Mapping[str, Any]) -> BaseModel | None:
        """The inputs as the action's model; PermanentError naming the field when wrong."""
        if definition.input_model is None:
            return None
        try:
            return definition.input_model.model_validate(dict(inputs))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "input"
            raise PermanentError(
                f"{definition.key}: input {where}: {error['msg']}", code="invalid_input"
            ) from None

    async def call(
        self,
        definition: ActionDef,
        params: BaseModel | None,
        ctx: ActionContext,
        *,
        limit: float | None = None,
    ) -> dict[str, Any]:
        """Call the action (at most ``limit`` seconds); its output as data, or an ActionError."""
        instance = ctx.instance or None
        resolved = self._cached(definition, instance) or await self.resolve(definition, instance)
        if self.data_policy is not None:
            await self.data_policy(definition, params, resolved)
        target = self._instances.get((definition.connector.name, resolved.name))
        if target is None or target.config != resolved.config:
            target = await self._instance(definition, resolved)
        method = getattr(target, definition.method)
        gates = self._gates.get(definition.key)
        if gates is None:
            gates = self._gates[definition.key] = self._limits_of(definition)
        if not gates:  # no limits: nothing to take or give back
            return _plain(await self._invoke(definition, method, params, ctx, limit))
        # A slot is held for a while and extended while the call runs: a dead worker's slot
        # is free again within a hold.
        async with _Limit(gates, self.limits, _SLOT_HOLD):
            result = await self._invoke(definition, method, params, ctx, limit)
        return _plain(result)

    @staticmethod
    async def _invoke(
        definition: ActionDef,
        method: Any,
        params: BaseModel | None,
        ctx: ActionContext,
        limit: float | None,
    ) -> Any:
        try:
            if limit is None:
                return await method(ctx, params)
            async with asyncio.timeout(limit):
                return await method(ctx, params)
        except TimeoutError:
            raise TransientError(
                f"{definition.key}: no answer within {limit:g}s", code="timeout"
            ) from None
        except ActionError:
            raise
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a connector's bug fails its step only
            log.error("action_crashed", action=definition.key, error=type(exc).__name__)
            raise ActionError(
                f"{definition.key} raised {type(exc).__name__}", code="connector_error"
            ) from None

    async def containment_row(
        self,
        definition: ActionDef,
        inputs: Mapping[str, Any],
        output: Mapping[str, Any],
        *,
        instance: str,
        run_id: str | None,
        step_key: str | None,
        created_by: str,
        now: datetime,
    ) -> dict[str, Any] | None:
        """The active-containment row a successful call of ``definition`` leaves, or None when
        the action reverts nothing (see :mod:`quell.engine.containment`)."""
        reverts = definition.meta.reverts
        if reverts is None or definition.is_read:
            return None
        revert_key = f"{definition.connector.name}.{reverts}"
        revert = self.registry.actions.get(revert_key)
        if revert is None or not contains(definition, revert):
            return None
        resolved = await self.resolve(definition, instance or None)
        target = await self._instance(definition, resolved)
        plain_inputs, plain_output = dict(inputs), dict(output)
        return ContainmentService.row(
            action=definition.key,
            instance=instance,
            target=plain_inputs,
            output=plain_output,
            revert_action=revert_key,
            revert_input=revert_plan(definition, revert, target, plain_inputs, plain_output),
            run_id=run_id,
            step_key=step_key,
            created_by=created_by,
            created_at=now,
            expires_at=expiry_of(now, plain_inputs, plain_output),
        )

    async def run_once(
        self,
        key: str,
        inputs: Mapping[str, Any],
        *,
        dry_run: bool = False,
        instance: str | None = None,
        actor: str = "unknown",
        limit: float | None = 60.0,
        record: bool = True,
    ) -> dict[str, Any]:
        """Call one action by hand (``quell action run``, ``POST /api/actions/{key}/run``):
        the same validation, instance, secrets, limits and SSRF guard as in a run. In dry-run a
        write that cannot pretend is not called; its validated input is returned instead."""
        definition = self.action(key)
        params = self.validate(definition, inputs)
        call_id = new_id("act")
        log.info("action_run_by_hand", action=key, actor=actor, dry_run=dry_run, call=call_id)
        if dry_run and not definition.is_read and not definition.meta.supports_dry_run:
            sent = params.model_dump(mode="json", by_alias=True) if params is not None else {}
            return {"simulated": True, "action": key, "input": sent}
        ctx = await self.context(
            definition,
            run_id=call_id,
            step_key=key,
            attempt=1,
            idempotency_key=f"{call_id}:{key}:1",
            dry_run=dry_run,
            instance=instance,
        )
        try:
            output = await self.call(definition, params, ctx, limit=limit)
        except ActionError as exc:
            await self._audit_by_hand(actor, key, instance, dry_run, call_id, exc.to_dict())
            raise
        await self._audit_by_hand(actor, key, instance, dry_run, call_id, None)
        if self.containments is not None and record and not dry_run:
            service = self.containments
            row = await self.containment_row(
                definition, sent_inputs(params, inputs), output,
                instance=ctx.instance, run_id=None, step_key=None, created_by=actor,
                now=service.clock.now(),
            )  # fmt: skip
            if row is not None:

                def store_row() -> None:
                    with service.db.write() as conn:
                        service.insert(conn, row)

                await asyncio.to_thread(store_row)
        return output

    async def _audit_by_hand(
        self,
        actor: str,
        key: str,
        instance: str | None,
        dry_run: bool,
        call_id: str,
        error: dict[str, Any] | None,
    ) -> None:
        if self.audit is None:
            return
        detail = {"call": call_id, "instance": instance, "dry_run": dry_run, "error": error}
        await asyncio.to_thread(self.audit.record, actor, "action.run_by_hand", key, detail)

    async def health(
        self, connector: type[Connector], instance: str | None = None, limit: float = 30.0
    ) -> str:
        """Run the connector's health check against its instance; what was checked, or an
        ActionError saying what failed."""
        if not connector.has_health_check():
            return f"{connector.name} declares no health check"
        keys = [key for key, found in self.registry.actions.items() if found.connector is connector]
        if not keys:
            raise PermanentError(f"{connector.name} has no actions")
        definition = self.registry.actions[keys[0]]
        ctx = await self.context(
            definition,
            run_id=new_id("act"),
            step_key="health",
            attempt=1,
            idempotency_key="health",
            dry_run=True,
            instance=instance,
        )
        resolved = await self.resolve(definition, ctx.instance or None)
        target = await self._instance(definition, resolved)
        try:
            async with asyncio.timeout(limit):
                return await target.health(ctx)
        except TimeoutError:
            raise TransientError(f"{connector.name}: no answer within {limit:g}s") from None
        except ActionError:
            raise
        except Exception as exc:  # noqa: BLE001 - a connector's bug is a failed check
            raise ActionError(
                f"{connector.name} health check raised {type(exc).__name__}",
                code="connector_error",
            ) from None

    async def reconcile(
        self, definition: ActionDef, params: BaseModel | None, ctx: ActionContext
    ) -> Reconciliation:
        """Ask the connector whether an earlier attempt landed (UNKNOWN without a hook)."""
        hook = definition.meta.reconcile
        if hook is None:
            return Reconciliation(Landed.UNKNOWN, detail=f"{definition.key} has no reconcile hook")
        try:
            resolved = await self.resolve(definition, ctx.instance or None)
        except ActionError as exc:
            return Reconciliation(Landed.UNKNOWN, detail=f"reconcile could not run: {exc.message}")
        method = getattr(await self._instance(definition, resolved), hook)
        try:
            answer = await method(ctx, params)
        except ActionError as exc:
            return Reconciliation(Landed.UNKNOWN, detail=f"reconcile failed: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - an unknown answer, not a crash
            return Reconciliation(Landed.UNKNOWN, detail=f"reconcile raised {type(exc).__name__}")
        if not isinstance(answer, Reconciliation):
            return Reconciliation(Landed.UNKNOWN, detail="reconcile returned no Reconciliation")
        return answer

    def _limits_of(self, definition: ActionDef) -> list[_Gate]:
        """The connector's limits, then the action's: always taken in that order."""
        connector = definition.connector
        gates = [
            self._gate(f"connector:{connector.name}", connector.concurrency, connector.rate),
            self._gate(definition.key, definition.meta.concurrency, definition.meta.rate),
        ]
        return [gate for gate in gates if gate is not None]

    def _gate(self, key: str, concurrency: int | None, rate_text: str | None) -> _Gate | None:
        if not concurrency and not rate_text:
            return None
        slot = None
        if concurrency:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = asyncio.Semaphore(concurrency)
        rate = parse_rate(rate_text) if rate_text else None
        bucket = None
        if rate is not None and self.limits is None:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(rate, max(1.0, rate))
        return _Gate(key, slot, concurrency, rate, bucket)

    async def aclose(self) -> None:
        """Close the connector instances (replaced ones too) and the HTTP pool."""
        for task in list(self._retiring):
            task.cancel()
        for instance in [*self._retired, *self._instances.values()]:
            await instance.aclose()
        self._retired.clear()
        if self._http is not None:
            await self._http.close()
            # Closing a pooled connection only starts closing its transport: one more turn of
            # the loop lets it finish, so a loop that ends next leaves no socket behind.
            await asyncio.sleep(0)


@dataclass(slots=True)
class _Gate:
    """One level of limits (a connector's or an action's)."""

    key: str
    slot: asyncio.Semaphore | None  # this process's share: no more than the cap wait on the db
    size: int | None
    rate: float | None
    bucket: _Bucket | None  # this process's bucket, when there is no database


class _Limit:
    """Around one call: for each gate, this process's slot, then the cluster's slot and rate."""

    def __init__(self, gates: list[_Gate], shared: SharedLimits | None, hold: timedelta) -> None:
        self.gates = gates
        self.shared = shared
        self.hold = hold
        self.entered: list[_Gate] = []
        self.held: list[tuple[str, int, str]] = []
        self.keeping: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        try:
            for gate in self.gates:
                await self._slot(gate)
            # Only a call that holds its slots takes a rate token (so calls held back by a cap
            # do not pile up tokens and then fire together); if its turn at the rate comes
            # later, it waits without its slots, which others may use meanwhile.
            wait = 0.0
            for gate in self.gates:
                wait = max(wait, await self._token(gate))
            if wait > 0:
                await self.__aexit__()
                await asyncio.sleep(wait)
                for gate in self.gates:
                    await self._slot(gate)
        except BaseException:
            await self.__aexit__()
            raise
        if self.held:
            self.keeping = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        """Extend the cluster slots while the call runs (a third of the hold at a time)."""
        shared = self.shared
        assert shared is not None
        while True:
            await asyncio.sleep(self.hold.total_seconds() / 3)
            for key, number, holder in list(self.held):
                try:
                    await asyncio.to_thread(shared.extend, key, number, holder, self.hold)
                except Exception as error:  # noqa: BLE001 - tried again a third of a hold later
                    log.warning("slot_extend_failed", limit=key, error=type(error).__name__)

    async def _token(self, gate: _Gate) -> float:
        """Take a rate token; the seconds until its turn."""
        if self.shared is not None and gate.rate is not None:
            capacity = max(1.0, gate.rate)
            return await asyncio.to_thread(self.shared.take_token, gate.key, gate.rate, capacity)
        if gate.bucket is not None:
            return gate.bucket.take()
        return 0.0

    async def _slot(self, gate: _Gate) -> None:
        if gate.slot is not None:
            await gate.slot.acquire()
        self.entered.append(gate)
        if self.shared is not None and gate.size:
            slot, holder = await self.shared.acquire(gate.key, gate.size, self.hold)
            self.held.append((gate.key, slot, holder))

    async def __aexit__(self, *exc: object) -> None:
        keeping, self.keeping = self.keeping, None
        if keeping is not None:
            keeping.cancel()
        held, self.held = self.held, []
        entered, self.entered = self.entered, []
        try:
            for key, number, holder in reversed(held):
                assert self.shared is not None
                try:
                    await asyncio.to_thread(self.shared.release, key, number, holder)
                except Exception as error:  # noqa: BLE001 - the slot expires on its own
                    log.warning("slot_release_failed", limit=key, error=type(error).__name__)
        finally:
            for gate in reversed(entered):
                if gate.slot is not None:
                    gate.slot.release()


_RISK_ORDER = {level: rank for rank, level in enumerate(RiskLevel)}


def contains(definition: ActionDef, revert: ActionDef) -> bool:
    """Whether a successful ``definition`` is a containment to record: it names its revert,
    and it is not itself the undoing side of a pair that name each other (``unsuspend`` names
    ``suspend`` too: of the two, the riskier one contains)."""
    if revert.meta.reverts != definition.method and revert.meta.reverts != definition.meta.name:
        return True
    return _RISK_ORDER[definition.meta.risk] > _RISK_ORDER[revert.meta.risk]


def sent_inputs(params: BaseModel | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs as validated (defaults filled in), as JSON data."""
    if params is None:
        return dict(given)
    return params.model_dump(mode="json", by_alias=True, exclude_none=True)


def _plain(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if isinstance(result, BaseModel):
        data = result.model_dump(mode="json", by_alias=True)
    elif isinstance(result, Mapping):
        data = dict(result)
    else:
        data = {"value": result}
    return data


__all__ = ["ActionRunner", "EnvSecrets", "parse_rate"]
