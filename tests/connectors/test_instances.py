"""Configured connector instances: checked settings, sealed secrets, and which one a call uses.

On both backends. The engine's side (an action running with its instance's settings and
secrets) is shown against a real peer in test_firewall_flow.py; here a test connector echoes
what it was given.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from quell.connectors.instances import InstanceService
from quell.connectors.registry import Registry
from quell.engine.actions import ActionRunner, EnvSecrets
from quell.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from quell.runtime import Runtime
from quell.sdk import (
    ActionContext,
    Connector,
    PermanentError,
    RiskLevel,
    SecretValue,
    action,
)
from quell.store.schema import connector_instances
from tests.connectors.echo import SECRET, Echo, EchoIn


@pytest.fixture
def service(runtime: Runtime) -> InstanceService:
    registry = Registry()
    registry.add(Echo)
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry)


def _say(service: InstanceService, instance: str | None = None) -> dict[str, Any]:
    runner = ActionRunner(service.registry, secrets=EnvSecrets({}), instances=service)

    async def call() -> dict[str, Any]:
        try:
            return await runner.run_once("echo.say", {"word": "hi"}, instance=instance)
        finally:
            await runner.aclose()

    return asyncio.run(call())


def test_an_instance_is_stored_with_its_secret_sealed(
    runtime: Runtime, service: InstanceService
) -> None:
    created = service.create(
        "echo-eu",
        "echo",
        {"base_url": "https://api.example"},
        {"api_token": SecretValue(SECRET)},
        created_by="cli:alice",
    )
    assert created.config == {"base_url": "https://api.example", "region": "eu"}
    assert created.secret_names == ("api_token",)
    assert SECRET not in str(created.as_dict())
    with runtime.db.read() as conn:
        row = conn.execute(select(connector_instances)).one()
    stored = bytes(row.secrets)
    assert SECRET.encode() not in stored
    assert stored.startswith(b"q1")  # AES-GCM, sealed by the secret box
    assert SECRET not in str(dict(row._mapping))

    out = _say(service)
    assert out == {
        "word": "hi",
        "base_url": "https://api.example",
        "region": "eu",
        "token_set": True,
        "token_length": len(SECRET),
    }


def test_a_sealed_secret_does_not_open_under_another_instance_name(
    runtime: Runtime, service: InstanceService
) -> None:
    service.create("a", "echo", {"base_url": "https://a"}, {"api_token": SecretValue(SECRET)})
    service.create("b", "echo", {"base_url": "https://b"})
    with runtime.db.write() as conn:  # move a's sealed secret onto b's row
        sealed = conn.execute(
            select(connector_instances.c.secrets).where(connector_instances.c.name == "a")
        ).scalar()
        conn.execute(
            connector_instances.update()
            .where(connector_instances.c.name == "b")
            .values(secrets=sealed, secret_names=["api_token"])
        )
    with pytest.raises(ConfigurationError, match="does not authenticate"):
        service.resolve(Echo, "b")


def test_bad_settings_and_unknown_secrets_are_refused_naming_the_field(
    service: InstanceService,
) -> None:
    with pytest.raises(InvalidInput) as caught:
        service.create("x", "echo", {"base_url": "ftp://nope"})
    assert caught.value.details["field"] == "config.base_url"
    with pytest.raises(InvalidInput) as caught:
        service.create("x", "echo", {"base_url": "https://a", "colour": "red"})
    assert caught.value.details["field"] == "config.colour"
    with pytest.raises(InvalidInput, match="declares no secret 'password'"):
        service.create("x", "echo", {"base_url": "https://a"}, {"password": SecretValue("p")})
    with pytest.raises(InvalidInput, match="no connector named 'nope'; connectors are: echo"):
        service.create("x", "nope")
    with pytest.raises(InvalidInput, match="instance name"):
        service.create("Bad Name", "echo", {"base_url": "https://a"})
    service.create("x", "echo", {"base_url": "https://a"})
    with pytest.raises(Conflict):
        service.create("x", "echo", {"base_url": "https://b"})
    assert [item.name for item in service.list_all()] == ["x"]


def test_which_instance_a_call_uses(service: InstanceService) -> None:
    # None configured and the config has a required field: a clear error, as a failed step.
    with pytest.raises(PermanentError, match="needs configuration"):
        _say(service)
    service.create("west", "echo", {"base_url": "https://west", "region": "us"})
    assert _say(service)["region"] == "us"  # the only one
    service.create("east", "echo", {"base_url": "https://east", "region": "ap"})
    with pytest.raises(PermanentError, match="several instances"):
        _say(service)
    assert _say(service, "east")["region"] == "ap"  # named by the caller
    service.create("echo", "echo", {"base_url": "https://default"})
    assert _say(service)["base_url"] == "https://default"  # the one named after the connector
    service.update("echo", enabled=False)
    with pytest.raises(PermanentError, match="disabled"):
        _say(service)
    with pytest.raises(PermanentError, match="no connector instance named 'ghost'"):
        _say(service, "ghost")


def test_settings_merge_and_secrets_are_set_and_cleared(service: InstanceService) -> None:
    service.create("one", "echo", {"base_url": "https://a"})
    assert service.update("one", config={"region": "us"}).config == {
        "base_url": "https://a",
        "region": "us",
    }
    with pytest.raises(InvalidInput) as caught:
        service.update("one", config={"region": "us"}, replace=True)
    assert caught.value.details["field"] == "config.base_url"
    assert _say(service)["token_set"] is False
    service.set_secret("one", "api_token", SecretValue("abc"))
    assert service.get("one").secret_names == ("api_token",)
    assert _say(service)["token_length"] == 3
    service.set_secret("one", "api_token", None)
    assert _say(service)["token_set"] is False
    with pytest.raises(NotFound):
        service.set_secret("one", "api_token", None)
    service.remove("one")
    with pytest.raises(NotFound):
        service.remove("one")


class _LocalConfig(BaseModel):
    table: str = "quell"  # every field has a default: unconfigured, it would run as it is


class _Local(Connector):
    """Stands for a connector whose defaults act on this host (as nftables's do)."""

    name = "localfw"
    Config = _LocalConfig
    needs_instance = True

    @action("say", risk=RiskLevel.READ)
    async def say(self, ctx: ActionContext, params: EchoIn) -> EchoIn:
        return params


def test_a_connector_that_needs_an_instance_never_runs_unconfigured(runtime: Runtime) -> None:
    registry = Registry()
    registry.add(_Local)
    service = InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry)
    for instances in (service, None):  # the runtime's instances, and none at all
        runner = ActionRunner(registry, secrets=EnvSecrets({}), instances=instances)

        async def call(run: ActionRunner = runner) -> dict[str, Any]:
            try:
                return await run.run_once("localfw.say", {"word": "hi"})
            finally:
                await run.aclose()

        with pytest.raises(PermanentError, match="runs only on an instance an admin added"):
            asyncio.run(call())
    service.create("edge", "localfw", {"table": "edge"})
    runner = ActionRunner(registry, secrets=EnvSecrets({}), instances=service)

    async def configured() -> dict[str, Any]:
        try:
            return await runner.run_once("localfw.say", {"word": "hi"})
        finally:
            await runner.aclose()

    assert asyncio.run(configured()) == {"word": "hi"}
