"""Testing connectors without a Quell server or database.

:class:`Harness` calls a connector's actions the way the engine does (the input validated by
the action's model, an :class:`ActionContext` with secrets, an idempotency key, dry-run and an
SSRF-guarded HTTP client, the output turned into plain data, anything but an
:class:`ActionError` turned into one) so a connector's own tests exercise exactly what runs in
production::

    from quell.sdk.testing import Harness

    async def test_block(firewall_api_url):
        async with Harness(MyFirewall, config={"url": firewall_api_url},
                           secrets={"api_key": "k"}, allow=["127.0.0.1"]) as harness:
            out = await harness.call("deny", {"ipv4_net": "203.0.113.7"})
            assert out["rule_number"] == 1
            assert await harness.reconcile("deny", {"ipv4_net": "203.0.113.7"}) == Landed.LANDED

:func:`check_contract` runs the checks Quell's own contract test makes on every registered
action (risk, typed schemas that export, docs, the revert and reconcile it names, examples for
dry-run), so a third-party connector can assert it keeps the contract before it is installed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

from pydantic import BaseModel, ValidationError

from quell.sdk.actions import (
    ActionInput,
    ActionOutput,
    Connector,
    Landed,
    RiskLevel,
    action_meta,
    signature_models,
)
from quell.sdk.context import ActionContext
from quell.sdk.errors import ActionError, PermanentError
from quell.sdk.http import OutboundPolicy, guard
from quell.sdk.secret import SecretValue

OPENC2_ACTIONS = frozenset(
    {
        "scan", "locate", "query", "deny", "contain", "allow", "start", "stop", "restart",
        "cancel", "set", "update", "redirect", "create", "delete", "detonate", "restore",
        "copy", "investigate", "remediate",
    }
)  # fmt: skip


def _plain(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if isinstance(result, BaseModel):
        return dict(result.model_dump(mode="json", by_alias=True))
    if isinstance(result, Mapping):
        return dict(result)
    return {"value": result}


class Harness:
    """One connector instance with its config and secrets, and a guarded HTTP client; use it
    as an async context manager (the client and the instance are closed at the end)."""

    def __init__(
        self,
        connector: type[Connector],
        *,
        config: Mapping[str, Any] | BaseModel | None = None,
        secrets: Mapping[str, str] | None = None,
        allow: Sequence[str] = (),
        run_id: str = "run-harness",
    ) -> None:
        self.connector = connector
        model = connector.Config
        if isinstance(config, BaseModel) or model is None:
            settings = config if isinstance(config, BaseModel) else None
        else:
            settings = model.model_validate(dict(config or {}))
        self.instance = connector(settings)
        self.secrets = {name: SecretValue(value) for name, value in (secrets or {}).items()}
        self.policy = OutboundPolicy.parse(allow)
        self.run_id = run_id
        self._session: Any = None
        self._calls = 0
        self._actions = {  # action name -> method name
            meta.name: attribute
            for attribute in dir(connector)
            if (meta := action_meta(getattr(connector, attribute, None))) is not None
        }

    async def __aenter__(self) -> Self:
        self._session = guard(self.policy, keep_cookies=False)  # as the engine's
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.instance.aclose()
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)  # let the pooled connections' transports finish closing

    def _method(self, name: str) -> tuple[Any, Any]:
        attribute = self._actions.get(name)
        if attribute is None:
            known = ", ".join(sorted(self._actions)) or "none"
            raise KeyError(f"{self.connector.name} has no action {name!r} (its actions: {known})")
        meta = action_meta(getattr(self.connector, attribute))
        return getattr(self.instance, attribute), meta

    def context(
        self, *, dry_run: bool = False, idempotency_key: str | None = None
    ) -> ActionContext:
        """A context as the engine gives an attempt (one new key per call unless given)."""
        self._calls += 1
        return ActionContext(
            run_id=self.run_id,
            step_id=f"step-{self._calls}",
            attempt=1,
            idempotency_key=idempotency_key or f"{self.run_id}:step-{self._calls}:1",
            dry_run=dry_run,
            secrets=dict(self.secrets),
            http=self._session,
            log_context={"connector": self.connector.name, "harness": True},
        )

    def params(self, name: str, inputs: Mapping[str, Any]) -> BaseModel | None:
        """The inputs as the action's model; PermanentError naming the field, as in a run."""
        model, _output = signature_models(getattr(self.connector, self._actions.get(name, name)))
        if model is None:
            return None
        try:
            return model.model_validate(dict(inputs))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "input"
            raise PermanentError(
                f"{self.connector.name}.{name}: input {where}: {error['msg']}",
                code="invalid_input",
            ) from None

    async def call(
        self,
        name: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Call action ``name``; its output as plain data, or an ActionError."""
        method, _meta = self._method(name)
        params = self.params(name, inputs or {})
        ctx = self.context(dry_run=dry_run, idempotency_key=idempotency_key)
        try:
            result = await method(ctx, params)
        except ActionError:
            raise
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise ActionError(
                f"{self.connector.name}.{name} raised {type(exc).__name__}",
                code="connector_error",
            ) from exc
        return _plain(result)

    async def reconcile(
        self, name: str, inputs: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Landed:
        """What the action's reconcile hook says about an attempt with this key."""
        _method, meta = self._method(name)
        if meta.reconcile is None:
            raise KeyError(f"{self.connector.name}.{name} has no reconcile hook")
        hook = getattr(self.instance, meta.reconcile)
        answer = await hook(
            self.context(idempotency_key=idempotency_key), self.params(name, inputs)
        )
        return Landed(answer.state)

    async def health(self) -> str:
        """The connector's health check."""
        return await self.instance.health(self.context())


def check_contract(connector: type[Connector]) -> list[str]:
    """What ``connector`` breaks of the action contract (an empty list: nothing)."""
    problems: list[str] = []
    if not getattr(connector, "name", ""):
        problems.append("the connector has no name")
    if not (connector.__doc__ or "").strip():
        problems.append(f"{connector.name}: no docstring")
    actions = {}
    for attribute in dir(connector):
        meta = action_meta(getattr(connector, attribute, None))
        if meta is not None:
            actions[meta.name] = (attribute, meta)
    if not actions:
        problems.append(f"{connector.name}: no actions")
    for name, (attribute, meta) in sorted(actions.items()):
        key = f"{connector.name}.{name}"
        method = getattr(connector, attribute)
        inputs, outputs = signature_models(method)
        if inputs is None or not issubclass(inputs, ActionInput):
            problems.append(f"{key}: the input is not an ActionInput model")
        if outputs is None or not issubclass(outputs, ActionOutput):
            problems.append(f"{key}: the output is not an ActionOutput model")
        schemas: list[tuple[type[BaseModel] | None, Literal["validation", "serialization"]]] = [
            (inputs, "validation"),
            (outputs, "serialization"),
        ]
        for model, mode in schemas:
            if model is not None:
                try:
                    json.dumps(model.model_json_schema(by_alias=True, mode=mode))
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    problems.append(f"{key}: {model.__name__}'s schema does not export: {exc}")
        if not (inspect.getdoc(method) or "").strip():
            problems.append(f"{key}: no docstring")
        if meta.reverts is not None:
            if meta.reverts not in actions:
                problems.append(f"{key}: reverts {meta.reverts!r}, which is not an action")
            if meta.risk is RiskLevel.READ:
                problems.append(f"{key}: a read reverts nothing")
        if meta.reconcile is not None and not callable(getattr(connector, meta.reconcile, None)):
            problems.append(f"{key}: no reconcile hook {meta.reconcile!r}")
        if meta.revert_with is not None and not callable(
            getattr(connector, meta.revert_with, None)
        ):
            problems.append(f"{key}: no revert_with hook {meta.revert_with!r}")
        if meta.openc2 is not None:
            verb, target, profile = meta.openc2
            if verb not in OPENC2_ACTIONS:
                problems.append(f"{key}: {verb!r} is not an OpenC2 action")
            if not target or not profile:
                problems.append(f"{key}: an OpenC2 pair needs a target and a profile")
        if meta.supports_dry_run:
            if meta.risk is RiskLevel.READ:
                problems.append(f"{key}: a read needs no dry-run flag")
            if inputs is not None and not inputs.model_json_schema().get("examples"):
                problems.append(f"{key}: supports dry-run but declares no example input")
    return problems


__all__ = ["OPENC2_ACTIONS", "Harness", "check_contract"]
