"""The action boundary of a playbook test: fixed answers instead of connectors.

:class:`MockActions` is the engine's :class:`~quell.engine.actions.ActionRunner` with ``call``
replaced: the engine still looks actions up in the real registry, validates the inputs against
the action's model and journals every attempt, but the answer comes from the case's mocks (by
step id first, then by action key). An action with no mock fails its step with ``no_mock`` and
the case fails, naming the step; no call ever reaches a peer. Only the ``core`` connector's
actions (log, echo, noop: nothing outside Quell) run for real when no mock is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from quell.connectors.registry import ActionDef, Registry
from quell.engine.actions import ActionRunner, EnvSecrets
from quell.playtest.cases import EACH, MockAnswer, MockError
from quell.sdk import (
    ActionContext,
    ActionError,
    AuthError,
    Landed,
    PermanentError,
    RateLimited,
    Reconciliation,
    SecretValue,
    TargetNotFound,
    TransientError,
)

REAL_CONNECTORS = frozenset({"core"})  # nothing outside Quell: run for real unless mocked
NO_MOCK = "no_mock"


@dataclass
class Call:
    """One call the engine made through the boundary."""

    run_id: str
    key: str  # the step key (``isolate[2]/contain``)
    step: str  # the step id (a for_each's id for its action body)
    action: str
    attempt: int
    inputs: dict[str, Any]
    answered_by: str | None  # "step:<id>", "action:<key>", "real", or None (no mock)
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "run_id": self.run_id,
            "key": self.key,
            "step": self.step,
            "action": self.action,
            "attempt": self.attempt,
            "inputs": self.inputs,
            "answered_by": self.answered_by,
            "output": self.output,
            "error": self.error,
        }


def step_id_of(key: str) -> str:
    """The step id in a step key: ``fan|1/isolate[2]/contain`` -> ``contain``."""
    step_id = key.rsplit("/", 1)[-1]
    return step_id.split("~", 1)[0]


@dataclass
class _Answers:
    answers: list[MockAnswer]
    used: int = 0

    def next(self) -> MockAnswer:
        answer = self.answers[min(self.used, len(self.answers) - 1)]
        self.used += 1
        return answer


@dataclass
class Mocks:
    """A case's mocks, each answering its calls in turn (the last answer repeats)."""

    by_step: dict[str, _Answers] = field(default_factory=dict)
    by_action: dict[str, _Answers] = field(default_factory=dict)

    @classmethod
    def build(cls, mocks: Mapping[str, list[MockAnswer]], steps: set[str]) -> Mocks:
        """Mocks keyed by step id (those in ``steps``) or else by action key."""
        found = cls()
        for key, answers in mocks.items():
            target = found.by_step if key in steps else found.by_action
            target[key] = _Answers(list(answers))
        return found

    def answer(self, step_id: str, action: str) -> tuple[MockAnswer, str] | None:
        """The answer to this call and which mock gave it, or None."""
        for name in (step_id, step_id.removesuffix(EACH)):
            found = self.by_step.get(name)
            if found is not None:
                return found.next(), f"step:{name}"
        by_action = self.by_action.get(action)
        if by_action is not None:
            return by_action.next(), f"action:{action}"
        return None


def raise_mocked(error: MockError, action: str) -> None:
    """Raise the ActionError a mocked failure stands for."""
    code = error.code
    message = error.message
    if error.type == "transient":
        raise TransientError(message, code=code)
    if error.type == "rate_limited":
        raise RateLimited(message, code=code)
    if error.type == "timeout":
        raise TransientError(f"{action}: {message}", code=code or "timeout")
    if error.type == "not_found":
        raise TargetNotFound(message, code=code)
    if error.type == "auth":
        raise AuthError(message, code=code)
    raise PermanentError(message, code=code)


class MockActions(ActionRunner):
    """An ActionRunner whose calls are answered by a case's mocks and recorded."""

    def __init__(self, registry: Registry, mocks: Mocks) -> None:
        super().__init__(registry, secrets=EnvSecrets({}))
        self.mocks = mocks
        self.calls: list[Call] = []
        self._inputs: dict[int, tuple[BaseModel, dict[str, Any]]] = {}

    def validate(self, definition: ActionDef, inputs: Mapping[str, Any]) -> BaseModel | None:
        """As the engine does; the inputs as the playbook rendered them are kept for the call."""
        params = super().validate(definition, inputs)
        if params is not None:
            self._inputs[id(params)] = (params, dict(inputs))
        return params

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
        """A context with no HTTP client and no secrets: nothing can reach a peer."""
        return ActionContext(
            run_id=run_id,
            step_id=step_key,
            attempt=attempt,
            idempotency_key=idempotency_key,
            dry_run=dry_run,
            log_context={"action": definition.key, "run": run_id, "step": step_key},
        )

    def _rendered(self, params: BaseModel | None) -> dict[str, Any]:
        if params is None:
            return {}
        kept = self._inputs.pop(id(params), None)
        if kept is not None and kept[0] is params:
            return kept[1]
        return params.model_dump(mode="json", by_alias=True)

    async def call(
        self,
        definition: ActionDef,
        params: BaseModel | None,
        ctx: ActionContext,
        *,
        limit: float | None = None,
    ) -> dict[str, Any]:
        """The mocked answer (or, for core actions without a mock, the real one)."""
        step_id = step_id_of(ctx.step_id)
        call = Call(
            run_id=ctx.run_id,
            key=ctx.step_id,
            step=step_id.removesuffix(EACH),
            action=definition.key,
            attempt=ctx.attempt,
            inputs=self._rendered(params),
            answered_by=None,
        )
        self.calls.append(call)
        found = self.mocks.answer(step_id, definition.key)
        if found is None:
            if definition.connector.name not in REAL_CONNECTORS:
                call.error = {"code": NO_MOCK}
                raise PermanentError(
                    f"no mock for {definition.key} (step {call.step!r}) in this test case",
                    code=NO_MOCK,
                )
            call.answered_by = "real"
            try:
                call.output = await super().call(definition, params, ctx, limit=limit)
            except ActionError as exc:
                call.error = {"code": exc.code, "message": exc.message}
                raise
            return call.output
        answer, call.answered_by = found
        if answer.error is not None:
            call.error = {"type": answer.error.type, "message": answer.error.message}
            raise_mocked(answer.error, definition.key)
        output = dict(answer.output or {})
        if definition.output_model is not None:
            # What the real action returns: its output model, defaults filled in.
            output = definition.output_model.model_validate(output).model_dump(
                mode="json", by_alias=True
            )
        call.output = output
        return output

    async def reconcile(
        self, definition: ActionDef, params: BaseModel | None, ctx: ActionContext
    ) -> Reconciliation:
        """A test never crashes mid-call; were it to, nothing landed anywhere."""
        return Reconciliation(Landed.NOT_LANDED, detail="a playbook test reaches no peer")


__all__ = ["NO_MOCK", "Call", "MockActions", "Mocks", "step_id_of"]
