"""Connectors over HTTP: what there is, configured instances and their secrets, health checks,
and calling one action by hand.

Secrets go in (``secrets`` on create, ``PUT .../secrets/{key}``) and never come out: instances
are shown with the names of the secrets they have set. Calling an action by hand needs
``runs:execute``; a write that is not a dry run also needs ``connectors:manage`` (a person who
may configure the peer), since it skips the playbook's approvals.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api.auth import Authorize, RuntimeDep
from quell.connectors.registry import describe_connector
from quell.errors import InvalidInput, NotFound, PermissionDenied
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.runtime import Runtime
from quell.sdk.errors import ActionError
from quell.sdk.secret import SecretValue

router = APIRouter(prefix="/api", tags=["connectors"])

CanRead = Annotated[Principal, Depends(Authorize(Permission.CONNECTORS_READ))]
CanManage = Annotated[Principal, Depends(Authorize(Permission.CONNECTORS_MANAGE))]
CanExecute = Annotated[Principal, Depends(Authorize(Permission.RUNS_EXECUTE))]
Name = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
SecretKey = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ActionKey = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,160}$")]


class InstanceIn(BaseModel):
    """An instance to configure."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    connector: str = Field(max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, SecretValue] = Field(
        default_factory=dict, description="Secret values by name; stored encrypted."
    )


class InstanceChange(BaseModel):
    """What to change; absent fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = Field(None, description="Merged into the current one.")
    replace: bool = Field(False, description="Replace the config instead of merging.")
    enabled: bool | None = None


class SecretIn(BaseModel):
    """A secret's new value (null clears it)."""

    model_config = ConfigDict(extra="forbid")

    value: SecretValue | None


class ActionRun(BaseModel):
    """One call of an action by hand."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(default_factory=dict)
    instance: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    dry_run: bool = False


def _overview(runtime: Runtime) -> dict[str, Any]:
    registry = runtime.registry
    instances = runtime.connector_instances.list_all()
    connectors = []
    for name, connector in sorted(registry.connectors.items()):
        connectors.append(
            {
                "name": name,
                "title": connector.title,
                "actions": sorted(
                    k for k, d in registry.actions.items() if d.connector is connector
                ),
                "secrets": list(connector.secrets),
                "instances": [i.name for i in instances if i.connector == name],
            }
        )
    return {"connectors": connectors, "instances": [item.as_dict() for item in instances]}


def _describe(runtime: Runtime, name: str) -> dict[str, Any]:
    registry = runtime.registry
    connector = registry.connectors.get(name)
    if connector is not None:
        return describe_connector(registry, connector)
    try:
        instance = runtime.connector_instances.get(name)
    except NotFound:
        raise NotFound(f"no connector or instance named {name!r}", field="name") from None
    described = describe_connector(registry, registry.connectors[instance.connector])
    described["instance"] = instance.as_dict()
    return described


@router.get("/connectors", summary="List connectors and instances")
async def list_connectors(runtime: RuntimeDep, _: CanRead) -> dict[str, Any]:
    """Every connector (with its actions) and every configured instance (never a secret)."""
    return await run_in_threadpool(_overview, runtime)


@router.get("/connectors/{name}", summary="Describe a connector or an instance")
async def describe(name: Name, runtime: RuntimeDep, _: CanRead) -> dict[str, Any]:
    """Config schema, declared secrets, limits, and each action with its risk and schemas."""
    return await run_in_threadpool(_describe, runtime, name)


@router.post("/connectors", status_code=status.HTTP_201_CREATED, summary="Configure an instance")
async def create_instance(
    body: InstanceIn, runtime: RuntimeDep, principal: CanManage
) -> dict[str, Any]:
    """Add an instance; its config is checked by the connector, its secrets sealed."""
    created = await run_in_threadpool(
        runtime.connector_instances.create,
        body.name,
        body.connector,
        body.config,
        body.secrets,
        created_by=principal.name,
    )
    return created.as_dict()


@router.patch("/connectors/{name}", summary="Change an instance")
async def update_instance(
    name: Name, body: InstanceChange, runtime: RuntimeDep, who: CanManage
) -> dict[str, Any]:
    """Change an instance's config, or turn it on or off."""
    changed = await run_in_threadpool(
        lambda: runtime.connector_instances.update(
            name, config=body.config, replace=body.replace, enabled=body.enabled, by=who.name
        )
    )
    return changed.as_dict()


@router.put("/connectors/{name}/secrets/{key}", summary="Set or clear a secret")
async def set_secret(
    name: Name, key: SecretKey, body: SecretIn, runtime: RuntimeDep, who: CanManage
) -> dict[str, Any]:
    """Set (or, with null, clear) one secret of an instance; it is stored encrypted."""
    changed = await run_in_threadpool(
        lambda: runtime.connector_instances.set_secret(name, key, body.value, by=who.name)
    )
    return changed.as_dict()


@router.delete(
    "/connectors/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove an instance"
)
async def remove_instance(name: Name, runtime: RuntimeDep, who: CanManage) -> None:
    """Delete an instance and its secrets."""
    await run_in_threadpool(lambda: runtime.connector_instances.remove(name, by=who.name))


@router.post("/connectors/{name}/test", summary="Run a health check")
async def test_instance(name: Name, runtime: RuntimeDep, principal: CanManage) -> dict[str, Any]:
    """The connector's health check against the peer of instance (or connector) ``name``;
    ``ok`` false with the reason when it fails."""
    registry = runtime.registry
    connector = registry.connectors.get(name)
    instance: str | None = None
    if connector is None:
        found = await run_in_threadpool(runtime.connector_instances.get, name)
        connector, instance = registry.connectors[found.connector], found.name
    runner = runtime.action_runner(f"api:{principal.name}")
    try:
        said = await runner.health(connector, instance)
    except ActionError as exc:
        return {"name": name, "ok": False, "detail": exc.message}
    finally:
        await runner.aclose()
    return {"name": name, "ok": True, "detail": said}


@router.post("/actions/{key}/run", summary="Call an action by hand")
async def run_action(
    key: ActionKey, body: ActionRun, runtime: RuntimeDep, principal: CanExecute
) -> dict[str, Any]:
    """Call action ``key`` once, as a run would (validation, instance, limits, SSRF guard).
    An input the action refuses is a 422 problem, like any bad request; a call made that
    failed answers 200 with ``ok`` false and the error: the request itself was fine."""
    definition = runtime.registry.get(key)
    writes = not definition.is_read and not body.dry_run
    if writes and not principal.can(Permission.CONNECTORS_MANAGE):
        raise PermissionDenied(
            f"calling the write {key} by hand (not as a dry run) needs connectors:manage"
        )
    runner = runtime.action_runner(f"api:{principal.name}")
    try:
        output = await runner.run_once(
            key,
            body.input,
            dry_run=body.dry_run,
            instance=body.instance,
            actor=f"api:{principal.name}",
        )
    except ActionError as exc:
        if exc.code == "invalid_input":
            raise InvalidInput(exc.message, field="body.input") from None
        return {"action": key, "ok": False, "error": exc.to_dict()}
    finally:
        await runner.aclose()
    return {"action": key, "ok": True, "output": output}
