"""Slack against a local server that speaks the documented Slack Web API.

The server checks the bot token on every call and answers as Slack does: HTTP 200 with
``{"ok": false, "error": "not_authed" | "invalid_auth" | "channel_not_found" | "no_text"}``,
HTTP 429 with ``Retry-After`` and ``ratelimited``. It serves ``auth.test``,
``conversations.list`` (cursor pagination through ``response_metadata.next_cursor``),
``chat.postMessage`` (JSON, with message metadata kept) and ``conversations.history`` (newest
first, metadata included when asked).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from quell.connectors.instances import InstanceService
from quell.connectors.registry import Registry
from quell.connectors.slack import ChannelIn, MessageIn, Slack, SlackConfig, key_hash
from quell.engine.actions import ActionRunner, EnvSecrets
from quell.runtime import Runtime
from quell.sdk import (
    ActionContext,
    AuthError,
    Landed,
    PermanentError,
    RateLimited,
    SecretValue,
    TargetNotFound,
    TransientError,
)
from quell.sdk.http import OutboundPolicy, guard
from tests.fixtures.webapp import serving

TOKEN = "xoxb-1234-5678-slacktokenvalue"
REGISTRY = Registry()
REGISTRY.add(Slack)
CHANNELS = [f"team-{n}" for n in range(7)] + ["soc-alerts"]


class FakeSlack:
    """The Slack Web API methods the connector uses, with state."""

    def __init__(self) -> None:
        self.channels = {f"C0{n:07d}": name for n, name in enumerate(CHANNELS, start=1)}
        self.messages: dict[str, list[dict[str, Any]]] = {cid: [] for cid in self.channels}
        self.seen: list[tuple[str, str]] = []
        self.cursors: list[str] = []
        self.faults: dict[str, tuple[int, dict[str, str], Any]] = {}
        self.clock = 1700000000

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        auth = request.headers.get("Authorization")
        if not auth:
            return web.json_response({"ok": False, "error": "not_authed"})
        if auth != f"Bearer {TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        fault = self.faults.get(request.path) or self.faults.get("*")
        if fault is not None:
            status, headers, body = fault
            return web.json_response(body, status=status, headers=headers)
        response: web.StreamResponse = await handler(request)
        return response

    async def auth_test(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "url": "https://soc.slack.com/", "team": "SOC",
                                  "user": "quell", "team_id": "T0001", "user_id": "U0001",
                                  "bot_id": "B0001"})  # fmt: skip

    async def conversations_list(self, request: web.Request) -> web.Response:
        cursor = request.query.get("cursor", "")
        self.cursors.append(cursor)
        start = int(cursor.removeprefix("dGVhbTpD")) if cursor else 0
        limit = int(request.query.get("limit", "100"))
        items = list(self.channels.items())
        page = [{"id": cid, "name": name, "is_channel": True, "is_archived": False}
                for cid, name in items[start : start + limit]]  # fmt: skip
        following = f"dGVhbTpD{start + limit}" if start + limit < len(items) else ""
        return web.json_response({"ok": True, "channels": page,
                                  "response_metadata": {"next_cursor": following}})  # fmt: skip

    async def post_message(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("application/json"):
            return web.json_response({"ok": False, "error": "invalid_form_data"})
        body = await request.json()
        channel = body.get("channel")
        if channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if not body.get("text") and not body.get("blocks"):
            return web.json_response({"ok": False, "error": "no_text"})
        self.clock += 1
        message = {"type": "message", "user": "U0001", "text": body.get("text", ""),
                   "ts": f"{self.clock}.000100"}  # fmt: skip
        for name in ("blocks", "metadata", "thread_ts"):
            if name in body:
                message[name] = body[name]
        self.messages[channel].append(message)
        shown = {key: value for key, value in message.items() if key != "metadata"}
        return web.json_response({"ok": True, "channel": channel, "ts": message["ts"],
                                  "message": shown})  # fmt: skip

    async def history(self, request: web.Request) -> web.Response:
        channel = request.query.get("channel", "")
        if channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        limit = int(request.query.get("limit", "100"))
        metadata = request.query.get("include_all_metadata") == "true"
        # As Slack: a channel's history holds its parent messages, not the replies in
        # threads (those are read with conversations.replies).
        parents = [m for m in self.messages[channel] if "thread_ts" not in m]
        newest = list(reversed(parents))[:limit]
        shown = [{k: v for k, v in m.items() if metadata or k != "metadata"} for m in newest]
        return web.json_response({"ok": True, "messages": shown, "has_more": False})

    async def replies(self, request: web.Request) -> web.Response:
        channel = request.query.get("channel", "")
        if channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        ts = request.query.get("ts", "")
        thread = [m for m in self.messages[channel] if ts in (m["ts"], m.get("thread_ts"))]
        if not thread:
            return web.json_response({"ok": False, "error": "thread_not_found"})
        limit = int(request.query.get("limit", "1000"))
        metadata = request.query.get("include_all_metadata") == "true"
        oldest_first = thread[:limit]  # the parent first, then its replies
        shown = [{k: v for k, v in m.items() if metadata or k != "metadata"} for m in oldest_first]
        return web.json_response({"ok": True, "messages": shown, "has_more": False})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_route("*", "/api/auth.test", self.auth_test)
        app.router.add_get("/api/conversations.list", self.conversations_list)
        app.router.add_post("/api/chat.postMessage", self.post_message)
        app.router.add_get("/api/conversations.history", self.history)
        app.router.add_get("/api/conversations.replies", self.replies)
        return app

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.seen if method != "GET"]

    def channel_id(self, name: str) -> str:
        return next(cid for cid, found in self.channels.items() if found == name)


@asynccontextmanager
async def serve() -> AsyncIterator[tuple[FakeSlack, str]]:
    fake = FakeSlack()
    async with serving(fake.app()) as base:
        yield fake, base


@asynccontextmanager
async def client(
    base: str, token: str | None = TOKEN, **config: Any
) -> AsyncIterator[tuple[Slack, Any]]:
    session = guard(OutboundPolicy.parse(["127.0.0.1"]))
    slack = Slack(SlackConfig.model_validate({"base_url": base, **config}))
    secrets = {"bot_token": SecretValue(token)} if token else {}

    def ctx(key: str = "run_1:step_1", dry_run: bool = False, attempt: int = 1) -> ActionContext:
        return ActionContext(run_id="run_1", step_id="step_1", attempt=attempt,
                             idempotency_key=key, dry_run=dry_run, secrets=secrets,
                             http=session)  # fmt: skip

    try:
        yield slack, ctx
    finally:
        await session.close()


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, REGISTRY)


def test_post_by_channel_name_through_the_runner(instances: InstanceService) -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            instances.create("slack-soc", "slack", {"base_url": base, "page_size": 3},
                             {"bot_token": SecretValue(TOKEN)})  # fmt: skip
            runner = ActionRunner(REGISTRY, secrets=EnvSecrets({}), instances=instances,
                                  outbound=OutboundPolicy.parse(["127.0.0.1"]))  # fmt: skip
            try:
                health = await runner.health(Slack, "slack-soc")
                assert health == "slack: signed in as quell in SOC (T0001)"
                blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Blocked*"}}]
                out = await runner.run_once(
                    "slack.post_message",
                    {"channel": "#soc-alerts", "text": "Blocked 203.0.113.7", "blocks": blocks},
                    instance="slack-soc",
                )
                soc = fake.channel_id("soc-alerts")
                assert (out["channel"], out["created"]) == (soc, True)
                [message] = fake.messages[soc]
                assert (message["text"], message["blocks"], message["ts"]) == (
                    "Blocked 203.0.113.7", blocks, out["ts"],
                )  # fmt: skip
                assert message["metadata"]["event_type"] == "quell_step"
                # soc-alerts is the 8th channel: pages of 3 -> 3 calls, following the cursor.
                assert fake.cursors == ["", "dGVhbTpD3", "dGVhbTpD6"]
                found = await runner.run_once(
                    "slack.resolve_channel", {"channel": "team-1"}, instance="slack-soc"
                )
                assert found["id"] == fake.channel_id("team-1")
            finally:
                await runner.aclose()

    asyncio.run(scenario())


def test_a_retry_finds_the_posted_message_and_reconciles() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (slack, ctx):
            params = MessageIn(channel="soc-alerts", text="Blocked.")
            soc = fake.channel_id("soc-alerts")
            assert (await slack.find_message(ctx(), params)).state is Landed.NOT_LANDED
            first = await slack.post_message(ctx(), params)
            assert first.created
            landed = await slack.find_message(ctx(), params)
            assert landed.state is Landed.LANDED
            assert landed.output == {**landed.output, "channel": soc, "ts": first.ts}
            retried = await slack.post_message(ctx(attempt=2), params)
            assert (retried.ts, retried.created) == (first.ts, False)
            assert len(fake.messages[soc]) == 1
            other = await slack.post_message(ctx("run_2:step_1", attempt=2), params)
            assert other.created
            assert len(fake.messages[soc]) == 2
            marks = [m["metadata"]["event_payload"]["key"] for m in fake.messages[soc]]
            assert marks == [key_hash("run_1:step_1"), key_hash("run_2:step_1")]

    asyncio.run(scenario())


def test_a_reply_in_a_thread_is_found_again() -> None:
    # conversations.history lists no replies in threads: a retried attempt and the reconcile
    # hook must read the thread, or a reply that landed is posted a second time.
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (slack, ctx):
            soc = fake.channel_id("soc-alerts")
            parent = await slack.post_message(
                ctx("run_0:step_0"), MessageIn(channel=soc, text="Alert")
            )
            params = MessageIn(channel="#soc-alerts", text="Contained.", thread_ts=parent.ts)
            assert (await slack.find_message(ctx(), params)).state is Landed.NOT_LANDED
            first = await slack.post_message(ctx(), params)
            assert first.created
            landed = await slack.find_message(ctx(), params)
            assert landed.state is Landed.LANDED
            assert landed.output is not None
            assert landed.output["ts"] == first.ts
            retried = await slack.post_message(ctx(attempt=2), params)
            assert (retried.ts, retried.created) == (first.ts, False)
            assert len(fake.messages[soc]) == 2

    asyncio.run(scenario())


def test_channel_lookup_pages_within_bounds() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            async with client(base, page_size=2) as (slack, ctx):
                found = await slack.resolve_channel(ctx(), ChannelIn(channel="#soc-alerts"))
                assert found.id == fake.channel_id("soc-alerts")
                assert len(fake.cursors) == 4
                await slack.resolve_channel(ctx(), ChannelIn(channel="#soc-alerts"))
                assert len(fake.cursors) == 4  # remembered
                with pytest.raises(TargetNotFound, match="channel #nowhere not found"):
                    await slack.resolve_channel(ctx(), ChannelIn(channel="#nowhere"))
            fake.cursors.clear()
            async with client(base, page_size=2, max_pages=3) as (slack, ctx):
                with pytest.raises(TargetNotFound, match="soc-alerts"):
                    await slack.resolve_channel(ctx(), ChannelIn(channel="soc-alerts"))
                assert len(fake.cursors) == 3

    asyncio.run(scenario())


def test_a_dry_run_only_reads() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (slack, ctx):
            out = await slack.post_message(
                ctx(dry_run=True), MessageIn(channel="#soc-alerts", text="Blocked.")
            )
            assert out.simulated
            assert out.channel == fake.channel_id("soc-alerts")
            assert out.payload is not None
            assert out.payload["channel"] == out.channel
            with pytest.raises(TargetNotFound):
                await slack.post_message(ctx(dry_run=True), MessageIn(channel="#x", text="y"))
            assert fake.writes() == []
            assert all(not messages for messages in fake.messages.values())

    asyncio.run(scenario())


def test_slack_errors_map_to_the_sdk_tree_without_secrets() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            async with client(base, token="xoxb-wrong-token-value") as (slack, ctx):
                with pytest.raises(AuthError) as refused:
                    await slack.health(ctx())
                assert "invalid_auth" in refused.value.message
                assert "xoxb-wrong-token-value" not in str(refused.value)
            async with client(base) as (slack, ctx):
                with pytest.raises(TargetNotFound, match="channel C9999999 not found"):
                    await slack.post_message(ctx(), MessageIn(channel="C9999999", text="x"))
                fake.faults["/api/chat.postMessage"] = (
                    200,
                    {},
                    {"ok": False, "error": "not_authed"},
                )
                with pytest.raises(AuthError, match="not_authed"):
                    await slack.post_message(ctx(), MessageIn(channel="C0000001", text="x"))
                fake.faults["/api/chat.postMessage"] = (
                    200, {}, {"ok": False, "error": "account_inactive"},
                )  # fmt: skip
                with pytest.raises(AuthError, match="account_inactive"):
                    await slack.post_message(ctx(), MessageIn(channel="C0000001", text="x"))
                fake.faults["/api/chat.postMessage"] = (
                    200,
                    {},
                    {"ok": False, "error": "msg_too_long"},
                )
                with pytest.raises(PermanentError, match="msg_too_long"):
                    await slack.post_message(ctx(), MessageIn(channel="C0000001", text="x"))
                fake.faults["*"] = (
                    429,
                    {"Retry-After": "30"},
                    {"ok": False, "error": "ratelimited"},
                )
                with pytest.raises(RateLimited) as limited:
                    await slack.health(ctx())
                assert limited.value.retry_after == 30
                fake.faults["*"] = (503, {}, {"ok": False, "error": "service_unavailable"})
                with pytest.raises(TransientError, match="HTTP 503"):
                    await slack.health(ctx())
                fake.faults["*"] = (200, {}, {"ok": False, "error": "internal_error"})
                with pytest.raises(TransientError, match="internal_error"):
                    await slack.health(ctx())

    asyncio.run(scenario())


def test_without_a_token_nothing_is_sent() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base, token=None) as (slack, ctx):
            with pytest.raises(PermanentError, match="secret 'bot_token' is not configured"):
                await slack.post_message(ctx(), MessageIn(channel="C0000001", text="x"))
            assert fake.seen == []

    asyncio.run(scenario())
