"""The contract every registered action keeps, walked over the registry as ``quell`` finds it.

Each action declares a risk, typed input and output whose JSON Schemas export, and docs; what
it names (the action that reverts it, its reconcile hook, its OpenC2 pair) exists. Each action
that says it supports dry-run is run in dry-run on each example input it declares, through an
HTTP client that refuses any request but a GET (to a local server that answers every GET) and
with child processes forbidden: a dry run may read, never write.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import BaseModel, ValidationError

from quell.connectors.registry import ActionDef, Registry
from quell.sdk import ActionContext, ActionError
from quell.sdk.http import GuardedConnector, OutboundPolicy
from quell.sdk.testing import check_contract

REGISTRY = Registry.discover()
ACTIONS = sorted(REGISTRY.actions)
DRY_RUN = sorted(key for key, found in REGISTRY.actions.items() if found.meta.supports_dry_run)


def test_the_built_in_connectors_are_all_found() -> None:
    assert {"core", "http", "nftables"} <= set(REGISTRY.connectors)
    assert len(ACTIONS) >= 9


@pytest.mark.parametrize("name", sorted(REGISTRY.connectors))
def test_every_connector_keeps_the_action_contract(name: str) -> None:
    """Each action: a risk, typed input and output whose schemas export, docs, and the revert,
    reconcile hook and OpenC2 pair it names (the SDK's own check, as connector authors run it)."""
    assert check_contract(REGISTRY.connectors[name]) == []


class _Refused(Exception):
    """A dry run tried to write."""


class _GetOnly(GuardedConnector):
    """Lets GETs through to the local server; anything else fails the test."""

    attempts: list[str]

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        if req.method != "GET":
            self.attempts.append(f"{req.method} {req.url}")
            raise _Refused(f"a dry run sent {req.method} {req.url}")
        return await super().connect(req, traces, timeout)


async def _no_children(*args: Any, **kwargs: Any) -> Any:
    raise _Refused(f"a dry run started a process: {args[:3]}")


@pytest.fixture
def forbid_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _no_children)
    monkeypatch.setattr(asyncio, "create_subprocess_shell", _no_children)


def _config(found: ActionDef) -> BaseModel | None:
    """The connector's config: its defaults, else its first declared example (which names
    loopback only, so a dry run's reads go nowhere)."""
    model = found.connector.Config
    if model is None:
        return None
    examples = model.model_json_schema().get("examples") or []
    try:
        return model()
    except ValidationError:
        assert examples, f"{found.connector.name}: config has required fields and no example"
        return model.model_validate(examples[0])


def _examples(found: ActionDef) -> list[dict[str, Any]]:
    assert found.input_model is not None
    schema = found.input_model.model_json_schema(by_alias=True)
    examples = schema.get("examples") or []
    assert examples, f"{found.key} supports dry-run but declares no example input"
    return [dict(example) for example in examples]


@pytest.mark.parametrize("key", DRY_RUN)
def test_every_dry_run_only_reads(key: str, forbid_processes: None) -> None:
    found = REGISTRY.actions[key]

    async def scenario() -> list[str]:
        async def answer(_request: web.Request) -> web.Response:
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        connector = _GetOnly(OutboundPolicy.parse(["127.0.0.1"]))
        connector.attempts = []
        session = aiohttp.ClientSession(connector=connector)
        instance = found.connector(_config(found))
        try:
            for number, example in enumerate(_examples(found)):
                assert found.input_model is not None
                params = found.input_model.model_validate(example)
                ctx = ActionContext(
                    run_id="run-contract",
                    step_id=key,
                    attempt=1,
                    idempotency_key=f"contract:{key}:{number}",
                    dry_run=True,
                    http=session,
                )
                # A read that failed is fine; a write is not (_Refused propagates).
                with contextlib.suppress(ActionError):
                    await getattr(instance, found.method)(ctx, params)
        finally:
            await instance.aclose()
            await session.close()
            await runner.cleanup()
        return connector.attempts

    assert asyncio.run(scenario()) == []
