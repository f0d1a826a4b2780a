"""``core``: actions that need no outside system (logging a line, passing a value on)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from quell.sdk import ActionContext, ActionInput, ActionOutput, Connector, RiskLevel, action


class LogIn(ActionInput):
    """A line for the run's log."""

    message: str = Field(max_length=10_000)
    level: Literal["debug", "info", "warning", "error"] = "info"


class LogOut(ActionOutput):
    """The line logged."""

    message: str


class EchoIn(ActionInput):
    """Any value."""

    value: Any = None


class EchoOut(ActionOutput):
    """The same value."""

    value: Any = None


class NoInput(ActionInput):
    """Nothing."""


class NoOutput(ActionOutput):
    """Nothing."""


class Core(Connector):
    """Actions of Quell itself."""

    name = "core"
    title = "Quell core"

    @action("log", risk=RiskLevel.READ, idempotent=True, title="Write a line to the run's log")
    async def log(self, ctx: ActionContext, params: LogIn) -> LogOut:
        """Log ``message`` (it also stays in the step's output)."""
        getattr(ctx.log, params.level)("playbook_log", message=params.message, run=ctx.run_id)
        return LogOut(message=params.message)

    @action("echo", risk=RiskLevel.READ, idempotent=True, title="Return the value given")
    async def echo(self, ctx: ActionContext, params: EchoIn) -> EchoOut:
        """Return ``value`` unchanged (to name a computed value as a step output)."""
        return EchoOut(value=params.value)

    @action("noop", risk=RiskLevel.READ, idempotent=True, title="Do nothing")
    async def noop(self, ctx: ActionContext, params: NoInput) -> NoOutput:
        """Do nothing."""
        return NoOutput()
