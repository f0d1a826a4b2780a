"""Declaring connectors and their actions.

A connector is a class; its actions are typed async methods::

    class Firewall(Connector):
        name = "firewall"
        secrets = ("api_key",)

        class Config(BaseModel):
            url: str

        @action("deny_ip", risk=RiskLevel.HIGH, reverts="allow_ip", reconcile="is_denied",
                openc2=("deny", "ipv4_net", "slpf"))
        async def deny_ip(self, ctx: ActionContext, params: DenyIn) -> DenyOut:
            ...

        async def is_denied(self, ctx: ActionContext, params: DenyIn) -> Reconciliation:
            ...

The decorator records a frozen :class:`ActionMeta` on the function; the input and output
models come from the signature. ``risk`` is required: ``read`` actions may run in dry-run and
are never held for approval by risk; everything else is a write.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from quell.sdk.context import ActionContext

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_META = "__quell_action__"


class RiskLevel(StrEnum):
    """How much harm an action can do if it is wrong."""

    READ = "read"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class ActionInput(BaseModel):
    """Base of action inputs: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class ActionOutput(BaseModel):
    """Base of action outputs."""

    model_config = ConfigDict(extra="allow")


class Landed(StrEnum):
    """Whether an earlier attempt of a write reached the peer."""

    LANDED = "landed"
    NOT_LANDED = "not_landed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Reconciliation:
    """A ``reconcile`` hook's answer; ``output`` stands for the landed attempt's output."""

    state: Landed
    output: dict[str, Any] | None = None
    detail: str = ""


@dataclass(frozen=True)
class ActionMeta:
    """What ``@action`` declares."""

    name: str
    risk: RiskLevel
    title: str = ""
    idempotent: bool = False  # repeating it with the same input changes nothing more
    supports_dry_run: bool = False  # it can be called with ctx.dry_run and only pretend
    reverts: str | None = None  # the action (of the same connector) that undoes it
    revert_with: str | None = None  # a method (params, output) -> the revert action's input
    reconcile: str | None = None  # a method telling whether an attempt landed
    openc2: tuple[str, str, str] | None = None  # (action, target, profile)
    concurrency: int | None = None  # calls at once, across all workers
    rate: str | None = None  # e.g. "10/s", "100/m", across all workers


def action(
    name: str,
    *,
    risk: RiskLevel | str,
    title: str = "",
    idempotent: bool = False,
    supports_dry_run: bool = False,
    reverts: str | None = None,
    revert_with: str | None = None,
    reconcile: str | None = None,
    openc2: tuple[str, str, str] | None = None,
    concurrency: int | None = None,
    rate: str | None = None,
) -> Callable[[F], F]:
    """Declare an async method of a :class:`Connector` as the action ``<connector>.<name>``."""
    meta = ActionMeta(
        name=name,
        risk=RiskLevel(risk),
        title=title,
        idempotent=idempotent,
        supports_dry_run=supports_dry_run,
        reverts=reverts,
        revert_with=revert_with,
        reconcile=reconcile,
        openc2=openc2,
        concurrency=concurrency,
        rate=rate,
    )

    def mark(function: F) -> F:
        candidate: Any = function  # (checking narrows the type mypy sees)
        if not inspect.iscoroutinefunction(candidate):
            raise TypeError(f"action {name!r} must be an async function")
        function.__dict__[_META] = meta  # read back, typed, by action_meta
        return function

    return mark


def action_meta(function: Any) -> ActionMeta | None:
    """The :class:`ActionMeta` ``@action`` put on ``function``, if any."""
    meta = getattr(function, _META, None)
    return meta if isinstance(meta, ActionMeta) else None


def signature_models(
    function: Callable[..., Any],
) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """The input and output models of an action method ``(self, ctx, params) -> Output``."""
    hints = typing.get_type_hints(function)
    parameters = list(inspect.signature(function).parameters)
    input_model = hints.get(parameters[2]) if len(parameters) >= 3 else None
    output_model = hints.get("return")
    return (
        input_model
        if isinstance(input_model, type) and issubclass(input_model, BaseModel)
        else None,
        output_model
        if isinstance(output_model, type) and issubclass(output_model, BaseModel)
        else None,
    )


class Connector:
    """Base of connectors: a name, an optional config model, the secrets it needs."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel] | None] = None
    secrets: ClassVar[tuple[str, ...]] = ()
    # Limits on the peer as a whole, over all of this connector's actions and every worker
    # (an action may declare tighter ones of its own).
    concurrency: ClassVar[int | None] = None  # calls at once
    rate: ClassVar[str | None] = None  # e.g. "4/s", "500/m"
    # A connector whose defaults act on the host Quell runs on (its firewall) never runs
    # unconfigured: only on an instance an admin added, so that nothing changes this machine
    # because a playbook or an OpenC2 command named an action nobody set up.
    needs_instance: ClassVar[bool] = False

    def __init__(self, config: BaseModel | None = None) -> None:
        self.config = config

    async def health(self, ctx: ActionContext) -> str:
        """Check that the configured peer answers, with a read; return what was checked
        (``"nft 1.0.6, table inet quell"``) or raise an :class:`ActionError`. ``quell
        connector test`` calls it. Connectors with nothing to check keep this default."""
        raise NotImplementedError

    @classmethod
    def has_health_check(cls) -> bool:
        """Whether the connector overrides :meth:`health`."""
        return cls.health is not Connector.health

    async def aclose(self) -> None:
        """Release what the instance holds (override when it holds something)."""


__all__ = [
    "ActionInput",
    "ActionMeta",
    "ActionOutput",
    "Connector",
    "Landed",
    "Reconciliation",
    "RiskLevel",
    "action",
    "action_meta",
    "signature_models",
]
