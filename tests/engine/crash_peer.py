"""The crash test's containment connector, loaded by ``quell worker`` through QUELL_PLUGINS.

``crashfw.block`` POSTs to a firewall stand-in (``bench.fwstub``) with the step's idempotency
key; its ``reconcile`` hook asks the stand-in whether that key ever arrived. The stand-in
deduplicates nothing, so a repeated containment shows up as a key counted twice.
"""

from __future__ import annotations

import asyncio

import aiohttp

from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    Connector,
    Landed,
    Reconciliation,
    RiskLevel,
    TransientError,
    action,
)


class BlockIn(ActionInput):
    """Block ``ip`` on the firewall at ``url``."""

    url: str
    ip: str
    # Time spent before and after the request, as a real API's latency: widens the windows in
    # which a kill lands before the peer saw the call, or after it and before the journal did.
    before: float = 0.0
    after: float = 0.0


class BlockOut(ActionOutput):
    """The firewall's answer."""

    blocked: str


class CrashFirewall(Connector):
    """A firewall API that only the crash test talks to."""

    name = "crashfw"

    @action("block", risk=RiskLevel.HIGH, reconcile="was_blocked", title="Block an address")
    async def block(self, ctx: ActionContext, params: BlockIn) -> BlockOut:
        """POST the block with the step's idempotency key."""
        await asyncio.sleep(params.before)
        try:
            async with ctx.client.post(
                f"{params.url}/block",
                json={"ip": params.ip},
                headers={"Idempotency-Key": ctx.idempotency_key},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                response.raise_for_status()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientError(f"firewall: {type(exc).__name__}") from None
        await asyncio.sleep(params.after)
        return BlockOut(blocked=params.ip)

    async def was_blocked(self, ctx: ActionContext, params: BlockIn) -> Reconciliation:
        """Ask the firewall whether this attempt's key reached it."""
        async with ctx.client.get(
            f"{params.url}/calls",
            params={"key": ctx.idempotency_key},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            seen = (await response.json())["count"]
        if seen:
            return Reconciliation(Landed.LANDED, {"blocked": params.ip})
        return Reconciliation(Landed.NOT_LANDED, detail="the firewall never saw this key")
