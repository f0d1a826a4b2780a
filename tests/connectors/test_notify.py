"""Chat webhooks against a local server that checks each product's documented format.

The server plays Slack (``POST /services/T/B/X``: ``text`` required, Block Kit blocks of
known types, header text at most 150 characters; answers ``ok``), Teams (a ``message`` with one
Adaptive Card attachment; answers 202) and Mattermost (``text`` required; answers ``ok``), and
answers 404 / 429 where the real services do. The connector is called as the engine calls it:
an instance with a sealed ``webhook_url``, through the action runner and the SSRF guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from quell.connectors.instances import InstanceService
from quell.connectors.notify import Notify
from quell.connectors.registry import Registry
from quell.engine.actions import ActionRunner, EnvSecrets
from quell.runtime import Runtime
from quell.sdk import ActionError, AuthError, PermanentError, RateLimited, SecretValue
from quell.sdk.http import OutboundPolicy
from tests.fixtures.webapp import serving

MESSAGE = {
    "title": "Blocked 203.0.113.7",
    "text": "Run run_1 blocked the source of alert 4711 for 24 h.",
    "severity": "high",
    "link": "https://quell.example/runs/run_1",
    "facts": {"alert": "4711", "rule": "ET SCAN"},
}
SLACK_BLOCKS = {"header", "section", "context", "divider", "actions", "image"}


def _slack_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
        return "no_text"
    for block in body.get("blocks", []):
        if block.get("type") not in SLACK_BLOCKS:
            return "invalid_blocks"
        if block["type"] == "header" and (
            block["text"]["type"] != "plain_text" or len(block["text"]["text"]) > 150
        ):
            return "invalid_blocks"
    return None


def _teams_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("type") != "message":
        return "not a message"
    attachments = body.get("attachments") or []
    if len(attachments) != 1:
        return "one attachment expected"
    card = attachments[0]
    if card.get("contentType") != "application/vnd.microsoft.card.adaptive":
        return "not an adaptive card"
    content = card.get("content") or {}
    if content.get("type") != "AdaptiveCard" or not content.get("version"):
        return "bad card"
    return None


async def _serve(body: Callable[[str, list[dict[str, Any]]], Awaitable[Any]]) -> Any:
    seen: list[dict[str, Any]] = []

    async def slack(request: web.Request) -> web.Response:
        payload = await request.json()
        seen.append({"product": "slack", "path": request.path, "body": payload})
        problem = _slack_problem(payload)
        if problem:
            return web.Response(status=400, text=problem)
        return web.Response(text="ok")

    async def teams(request: web.Request) -> web.Response:
        payload = await request.json()
        seen.append({"product": "teams", "path": request.path, "body": payload})
        problem = _teams_problem(payload)
        return web.Response(status=400, text=problem) if problem else web.Response(status=202)

    async def mattermost(request: web.Request) -> web.Response:
        payload = await request.json()
        seen.append({"product": "mattermost", "path": request.path, "body": payload})
        if not payload.get("text"):
            return web.json_response({"message": "text required"}, status=400)
        return web.Response(text="ok")

    async def revoked(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no_service")

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=429, text="rate_limited", headers={"Retry-After": "7"})

    app = web.Application()
    app.router.add_post("/services/T0/B0/secret123", slack)
    app.router.add_post("/workflows/teams/secret456", teams)
    app.router.add_post("/hooks/secret789", mattermost)
    app.router.add_post("/services/revoked", revoked)
    app.router.add_post("/services/busy", busy)
    async with serving(app) as base:
        return await body(base, seen)


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    registry = Registry()
    registry.add(Notify)
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry)


async def _post(instances: InstanceService, name: str, **options: Any) -> dict[str, Any]:
    runner = ActionRunner(
        instances.registry,
        secrets=EnvSecrets({}),
        instances=instances,
        outbound=OutboundPolicy.parse(["127.0.0.1"]),
    )
    try:
        return await runner.run_once("notify.message", MESSAGE, instance=name, **options)
    finally:
        await runner.aclose()


def _configure(instances: InstanceService, name: str, fmt: str, url: str, **config: Any) -> None:
    instances.create(name, "notify", {"format": fmt, **config}, {"webhook_url": SecretValue(url)})


def test_each_product_gets_its_documented_format(instances: InstanceService) -> None:
    async def body(base: str, seen: list[dict[str, Any]]) -> None:
        _configure(instances, "soc-slack", "slack", f"{base}/services/T0/B0/secret123")
        _configure(instances, "soc-teams", "teams", f"{base}/workflows/teams/secret456")
        _configure(
            instances, "soc-mm", "mattermost", f"{base}/hooks/secret789",
            username="quell", channel="town-square",
        )  # fmt: skip
        assert (await _post(instances, "soc-slack"))["status"] == 200
        assert (await _post(instances, "soc-teams"))["status"] == 202
        assert (await _post(instances, "soc-mm"))["status"] == 200

        slack, teams, mattermost = (item["body"] for item in seen)
        assert slack["text"].endswith("Blocked 203.0.113.7: Run run_1 blocked the source of "
                                      "alert 4711 for 24 h.")  # fmt: skip
        assert [block["type"] for block in slack["blocks"]] == [
            "header", "section", "section", "context",
        ]  # fmt: skip
        assert "<https://quell.example/runs/run_1|open in Quell>" in str(slack["blocks"][-1])
        card = teams["attachments"][0]["content"]
        assert card["body"][1]["text"] == MESSAGE["text"]
        assert {"title": "rule", "value": "ET SCAN"} in card["body"][2]["facts"]
        assert card["actions"][0]["url"] == MESSAGE["link"]
        assert mattermost["username"] == "quell"
        assert mattermost["channel"] == "town-square"
        assert "| alert | 4711 |" in mattermost["text"]

    asyncio.run(_serve(body))


def test_failures_name_the_product_and_status_never_the_url(instances: InstanceService) -> None:
    async def body(base: str, seen: list[dict[str, Any]]) -> None:
        _configure(instances, "gone", "slack", f"{base}/services/revoked")
        _configure(instances, "busy", "slack", f"{base}/services/busy")
        _configure(instances, "metadata", "slack", "http://169.254.169.254/latest/")
        with pytest.raises(AuthError) as revoked:
            await _post(instances, "gone")
        assert "slack webhook: HTTP 404 (no_service)" in revoked.value.message
        assert "revoked" in revoked.value.message
        assert "/services/revoked" not in revoked.value.message
        with pytest.raises(RateLimited) as busy:
            await _post(instances, "busy")
        assert busy.value.retry_after == 7
        with pytest.raises(PermanentError) as blocked:
            await _post(instances, "metadata")
        assert blocked.value.code == "outbound_blocked"

    asyncio.run(_serve(body))


def test_a_dry_run_shows_the_payload_and_sends_nothing(instances: InstanceService) -> None:
    async def body(base: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
        _configure(instances, "soc-slack", "slack", f"{base}/services/T0/B0/secret123")
        out = await _post(instances, "soc-slack", dry_run=True)
        assert seen == []
        return out

    out = asyncio.run(_serve(body))
    assert out["simulated"] is True
    assert out["payload"]["blocks"][0]["type"] == "header"


def test_without_a_webhook_the_call_fails_clearly(instances: InstanceService) -> None:
    instances.create("bare", "notify", {"format": "slack"})
    with pytest.raises(ActionError, match="secret 'webhook_url' is not configured"):
        asyncio.run(_post(instances, "bare"))
