"""The connector authors' harness: actions called as the engine calls them, without Quell."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from quell.connectors.notify import Notify
from quell.sdk import ActionContext, ActionError, Connector, Landed, PermanentError, RiskLevel
from quell.sdk.actions import ActionInput, ActionOutput, action
from quell.sdk.testing import Harness, check_contract
from tests.engine import peer
from tests.engine.peer import Peer
from tests.fixtures.webapp import serving


class NoOut(ActionInput):
    pass


class Broken(Connector):
    name = "broken"

    @action("undo_nothing", risk=RiskLevel.READ, reverts="missing", supports_dry_run=True)
    async def undo_nothing(self, ctx: ActionContext, params: NoOut) -> dict[str, Any]:
        return {}


def test_an_action_runs_with_its_config_secrets_and_the_guarded_client() -> None:
    async def scenario() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        seen: list[Any] = []

        async def hook(request: web.Request) -> web.Response:
            seen.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        message = {"title": "t", "text": "hello"}
        async with serving(app) as base:
            async with Harness(
                Notify,
                config={"format": "mattermost", "username": "quell"},
                secrets={"webhook_url": f"{base}/hook"},
                allow=["127.0.0.1"],
            ) as harness:
                sent = await harness.call("message", message)
                pretend = await harness.call("message", message, dry_run=True)
                with pytest.raises(PermanentError, match="input title"):
                    await harness.call("message", {"text": "no title"})
                with pytest.raises(KeyError, match="no action 'shout'"):
                    await harness.call("shout", {})
            async with Harness(
                Notify, secrets={"webhook_url": f"{base}/hook"}
            ) as guarded:  # nothing allowed: loopback is refused, as in production
                with pytest.raises(PermanentError) as blocked:
                    await guarded.call("message", message)
                assert blocked.value.code == "outbound_blocked"
        return seen, sent, pretend

    seen, sent, pretend = asyncio.run(scenario())
    assert seen == [{"text": "#### 🔵 t\nhello", "username": "quell"}]
    assert sent == {"format": "mattermost", "status": 200, "simulated": False, "payload": None}
    assert pretend["simulated"] is True


def test_reconcile_and_a_crash_are_as_in_a_run() -> None:
    async def scenario() -> None:
        Peer.reset()
        async with Harness(peer.Test) as harness:
            before = await harness.reconcile("contain", {"target": "ws-1"}, idempotency_key="k1")
            await harness.call("contain", {"target": "ws-1"}, idempotency_key="k1")
            after = await harness.reconcile("contain", {"target": "ws-1"}, idempotency_key="k1")
            assert (before, after) == (Landed.NOT_LANDED, Landed.LANDED)
            with pytest.raises(ActionError, match=r"test\.boom raised RuntimeError"):
                await harness.call("boom", {"value": 1})
            assert (await harness.call("release", {"target": "ws-1"}))["target"] == "ws-1"

    asyncio.run(scenario())


def test_the_contract_check_names_what_breaks_it() -> None:
    problems = check_contract(Broken)
    assert "broken: no docstring" in problems
    assert "broken.undo_nothing: the output is not an ActionOutput model" in problems
    assert "broken.undo_nothing: no docstring" in problems
    assert "broken.undo_nothing: reverts 'missing', which is not an action" in problems
    assert "broken.undo_nothing: a read needs no dry-run flag" in problems
    assert "broken.undo_nothing: supports dry-run but declares no example input" in problems
    assert ActionOutput is not None
