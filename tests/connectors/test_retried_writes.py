"""A write retried by the engine finds what its earlier attempt made, whatever the connector.

The engine gives each attempt of a step its own idempotency key (``run:step:attempt``, see
``quell.engine.execution.idempotency_key``), so that reconcile asks about the very attempt a
crash cut off.
A write that failed in a way that may have landed (a timeout, a 502 after the peer acted) is
retried as a new attempt: the ticketing and chat connectors must look for what *the step* made
(not only this attempt), and ``http.request`` must send the step's ``Idempotency-Key`` again, or
the retry opens a second ticket, posts a second message, or lets the peer apply it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from aiohttp import web

from quell.connectors.http import Http, RequestIn
from quell.connectors.jira import CreateIssueIn
from quell.connectors.servicenow import IncidentIn
from quell.connectors.slack import MessageIn
from quell.connectors.thehive import AlertIn, CaseIn
from quell.engine.execution import idempotency_key
from quell.sdk import ActionContext, Landed, TransientError
from quell.sdk.http import OutboundPolicy, guard
from tests.connectors import test_jira, test_servicenow, test_slack, test_thehive
from tests.fixtures.webapp import serving

RUN = "run_01hz0000000000000000000000"


def engine_key(step: str, attempt: int) -> str:
    """The idempotency key the engine gives this attempt of this step."""
    return idempotency_key(RUN, step, attempt)


def attempt_of(ctx: ActionContext, step: str, attempt: int) -> ActionContext:
    """``ctx`` as the engine builds it for this attempt of this step."""
    return ActionContext(run_id=RUN, step_id=step, attempt=attempt,
                         idempotency_key=engine_key(step, attempt), secrets=ctx.secrets,
                         http=ctx.http)  # fmt: skip


LONG_STEP = "open_ticket" + "/for_each[7]/inner_step" * 8  # a key the engine hashes


def test_jira_a_retried_create_finds_the_issue() -> None:
    async def scenario() -> None:
        async with test_jira.serve() as (fake, base), test_jira.client(base) as (jira, ctx):
            params = CreateIssueIn.model_validate(test_jira.ISSUE)
            for step in ("open_ticket", LONG_STEP):
                first = await jira.create_issue(attempt_of(ctx(), step, 1), params)
                assert first.created
                # attempt 1's POST landed, but its answer was lost (a timeout): attempt 2
                second = await jira.create_issue(attempt_of(ctx(), step, 2), params)
                assert (second.key, second.created) == (first.key, False)
                landed = await jira.find_issue(attempt_of(ctx(), step, 2), params)
                assert landed.state is Landed.LANDED
            assert len(fake.issues) == 2

    asyncio.run(scenario())


def test_servicenow_a_retried_create_finds_the_incident() -> None:
    async def scenario() -> None:
        async with (
            test_servicenow.serve() as (fake, base),
            test_servicenow.client(base) as (
                snow,
                ctx,
            ),
        ):
            params = IncidentIn.model_validate(test_servicenow.INCIDENT)
            first = await snow.create_incident(attempt_of(ctx(), "open_ticket", 1), params)
            second = await snow.create_incident(attempt_of(ctx(), "open_ticket", 2), params)
            assert (second.sys_id, second.created) == (first.sys_id, False)
            assert len(fake.records) == 1

    asyncio.run(scenario())


def test_thehive_a_retried_create_finds_the_alert_and_the_case() -> None:
    async def scenario() -> None:
        async with test_thehive.serve() as (fake, base), test_thehive.client(base) as (hive, ctx):
            alert = AlertIn.model_validate(test_thehive.ALERT)
            first = await hive.create_alert(attempt_of(ctx(), "raise", 1), alert)
            second = await hive.create_alert(attempt_of(ctx(), "raise", 2), alert)
            assert (second.id, second.created) == (first.id, False)
            assert len(fake.alerts) == 1
            case = CaseIn.model_validate(test_thehive.CASE)
            opened = await hive.create_case(attempt_of(ctx(), "open", 1), case)
            again = await hive.create_case(attempt_of(ctx(), "open", 2), case)
            assert (again.id, again.created) == (opened.id, False)
            assert len(fake.cases) == 1

    asyncio.run(scenario())


def test_slack_a_retried_post_finds_the_message() -> None:
    async def scenario() -> None:
        async with test_slack.serve() as (fake, base), test_slack.client(base) as (slack, ctx):
            params = MessageIn(channel="#soc-alerts", text="Blocked 203.0.113.7.")
            first = await slack.post_message(attempt_of(ctx(), "tell", 1), params)
            second = await slack.post_message(attempt_of(ctx(), "tell", 2), params)
            assert (second.ts, second.created) == (first.ts, False)
            assert len(fake.messages[fake.channel_id("soc-alerts")]) == 1

    asyncio.run(scenario())


def test_http_a_retried_request_sends_the_same_idempotency_key() -> None:
    seen: list[str] = []

    async def deny(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Idempotency-Key", ""))
        return web.json_response({"ok": True})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/deny", deny)
        session = guard(OutboundPolicy.parse(["127.0.0.1"]))
        try:
            async with serving(app) as base:
                ctx = ActionContext(run_id=RUN, step_id="block", attempt=1,
                                    idempotency_key="", http=session)  # fmt: skip
                params = RequestIn.model_validate({"url": f"{base}/deny", "json": {"ip": "x"}})
                for attempt in (1, 2):
                    await Http().request(attempt_of(ctx, "block", attempt), params)
        finally:
            await session.close()

    asyncio.run(scenario())
    assert len(seen) == 2
    assert seen[0] == seen[1] != ""


def test_the_step_key_is_the_same_for_every_attempt_and_only_for_that_step() -> None:
    for step in ("isolate", LONG_STEP):
        keys = {attempt_of(ActionContext("r", step, 1, ""), step, n).step_idempotency_key
                for n in (1, 2, 11)}  # fmt: skip
        assert len(keys) == 1
        (key,) = keys
        assert key.startswith(RUN + ":")
        assert not key.endswith((":1", ":2", ":11"))
    other = attempt_of(ActionContext("r", "other", 1, ""), "other", 1).step_idempotency_key
    assert (
        other != attempt_of(ActionContext("r", "isolate", 1, ""), "isolate", 1).step_idempotency_key
    )


def test_http_a_request_unanswered_may_have_landed_and_one_never_connected_did_not() -> None:
    """A timeout after the request went out is ``timeout`` (the engine asks the peer before a
    retry); a connect that timed out sent nothing, and is an ordinary ``transient`` failure."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"ok": True})

    async def scenario() -> tuple[str, str]:
        app = web.Application()
        app.router.add_post("/deny", slow)
        session = guard(OutboundPolicy.parse(["127.0.0.1"]))
        # A listener that never accepts, its backlog filled: the next connect waits for a
        # place in the queue that never comes (Linux drops the SYN), on loopback.
        full = socket.socket()
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        ctx = ActionContext(run_id=RUN, step_id="block", attempt=1, idempotency_key="r:b:1",
                            http=session)  # fmt: skip
        codes = []
        try:
            async with serving(app) as base:
                for url in (f"{base}/deny", f"http://127.0.0.1:{port}/deny"):
                    params = RequestIn.model_validate({"url": url, "json": {}, "timeout": 1})
                    with pytest.raises(TransientError) as caught:
                        await Http().request(ctx, params)
                    codes.append(caught.value.code)
        finally:
            await session.close()
            for filler in fillers:
                filler.close()
            full.close()
        return codes[0], codes[1]

    assert asyncio.run(scenario()) == ("timeout", "transient")
