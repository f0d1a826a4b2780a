"""``quell connector`` and ``quell action``: the connectors there are, their configured
instances (with sealed secrets), health checks, and calling one action by hand."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from quell import aio
from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.playbooks import actor
from quell.cli.sources import _object
from quell.cli.state import CliState, pass_state
from quell.errors import InvalidInput, NotFound
from quell.sdk.errors import ActionError
from quell.sdk.secret import SecretValue

if TYPE_CHECKING:
    from quell.connectors.instances import InstanceService
    from quell.connectors.registry import Registry
    from quell.engine.actions import ActionRunner
    from quell.runtime import Runtime


def _registry(runtime: Runtime) -> Registry:
    return runtime.registry


def _instances(runtime: Runtime, registry: Registry) -> InstanceService:
    return runtime.connector_instances


def _runner(runtime: Runtime, registry: Registry) -> ActionRunner:
    return runtime.action_runner(actor())


def _secrets(pairs: tuple[str, ...], from_stdin: str | None) -> dict[str, SecretValue]:
    """``--secret-env KEY=VAR`` pairs and ``--secret-stdin KEY``: never a value on the
    command line, where shell history and ``ps`` would keep it."""
    found: dict[str, SecretValue] = {}
    for pair in pairs:
        key, sep, variable = pair.partition("=")
        if not sep or not key or not variable:
            raise InvalidInput(f"--secret-env takes KEY=VARIABLE, not {pair!r}", field="secret")
        value = os.environ.get(variable)
        if not value:
            raise InvalidInput(
                f"environment variable {variable} (for secret {key}) is empty or unset",
                field="secret",
            )
        found[key] = SecretValue(value)
    if from_stdin:
        value = sys.stdin.readline().rstrip("\n")
        if not value:
            raise InvalidInput(f"no value on stdin for secret {from_stdin}", field="secret")
        found[from_stdin] = SecretValue(value)
    return found


def _run_async(runtime: Runtime, coroutine: Any) -> Any:
    return aio.run(coroutine, runtime.settings.event_loop)


@click.group("connector")
def connector_group() -> None:
    """Connectors, their configured instances and secrets, and health checks."""


@connector_group.command("list")
@json_option
@pass_state
def list_connectors(state: CliState, as_json: bool) -> None:
    """Every connector and every configured instance."""
    runtime = state.runtime()
    registry = _registry(runtime)
    instances = _instances(runtime, registry).list_all()
    by_connector: dict[str, list[str]] = {}
    for item in instances:
        by_connector.setdefault(item.connector, []).append(item.name)
    connectors: list[dict[str, Any]] = []
    for name, connector in sorted(registry.connectors.items()):
        actions = [key for key, d in registry.actions.items() if d.connector is connector]
        connectors.append(
            {
                "name": name,
                "title": connector.title,
                "actions": len(actions),
                "secrets": list(connector.secrets),
                "instances": by_connector.get(name, []),
            }
        )
    if as_json:
        print_json({"connectors": connectors, "instances": [item.as_dict() for item in instances]})
        return
    print_table(
        ["CONNECTOR", "ACTIONS", "SECRETS", "INSTANCES", "TITLE"],
        [
            [c["name"], c["actions"], ",".join(c["secrets"]) or "-",
             ",".join(c["instances"]) or "-", c["title"]]
            for c in connectors
        ],
    )  # fmt: skip


def _settings_rows(schema: dict[str, Any] | None) -> list[list[str]]:
    """A connector's settings (its config model's JSON Schema) as table rows."""
    if not schema:
        return []
    required = set(schema.get("required", []))
    rows = []
    for name, field in schema.get("properties", {}).items():
        kinds = [field, *field.get("anyOf", [])]
        kind = "|".join(
            str(k.get("type") or k.get("$ref", "").rsplit("/", 1)[-1] or "")
            for k in kinds
            if k.get("type") != "null" and (k.get("type") or k.get("$ref"))
        )
        if "enum" in field:
            kind = "|".join(map(str, field["enum"]))
        default = "(required)" if name in required else repr(field.get("default", None))
        rows.append([name, kind or "-", default, str(field.get("description", ""))])
    return rows


@connector_group.command("describe")
@click.argument("name")
@json_option
@pass_state
def describe(state: CliState, name: str, as_json: bool) -> None:
    """A connector (or a configured instance's connector): config, secrets and actions."""
    from quell.connectors.registry import describe_connector

    runtime = state.runtime()
    registry = _registry(runtime)
    instance: dict[str, Any] | None = None
    connector = registry.connectors.get(name)
    if connector is None:
        try:
            found = _instances(runtime, registry).get(name)
        except NotFound:
            known = ", ".join(sorted(registry.connectors))
            raise NotFound(
                f"no connector or instance named {name!r}; connectors are: {known}",
                field="name",
                value=name,
            ) from None
        instance = found.as_dict()
        connector = registry.connectors[found.connector]
    described = describe_connector(registry, connector)
    if instance is not None:
        described["instance"] = instance
    if as_json:
        print_json(described)
        return
    click.echo(f"{described['name']}: {described['title'] or described['description']}")
    if instance is not None:
        click.echo(f"instance {instance['name']}: config {instance['config']}")
        click.echo(f"  secrets set: {', '.join(instance['secrets']) or 'none'}")
    click.echo(f"secrets declared: {', '.join(described['secrets']) or 'none'}")
    click.echo(f"health check: {'yes' if described['health_check'] else 'no'}")
    settings = _settings_rows(described["config_schema"])
    if settings:
        print_table(["SETTING", "TYPE", "DEFAULT", "DESCRIPTION"], settings)
    else:
        click.echo("settings: none")
    print_table(
        ["ACTION", "RISK", "DRY-RUN", "REVERTS", "OPENC2", "TITLE"],
        [
            [
                a["key"], a["risk"], "yes" if a["supports_dry_run"] else "-",
                a["reverts"] or "-",
                " ".join(a["openc2"].values()) if a["openc2"] else "-",
                a["title"] or a["description"].split("\n")[0],
            ]
            for a in described["actions"]
        ],
    )  # fmt: skip


@connector_group.command("add")
@click.argument("name")
@click.option(
    "--type", "connector", required=True, help="The connector (see quell connector list)."
)
@click.option("--config", "config_text", help="Settings: inline JSON/YAML or @FILE.")
@click.option(
    "--secret-env",
    "secret_env",
    multiple=True,
    metavar="KEY=VARIABLE",
    help="Set secret KEY from environment variable VARIABLE (repeatable).",
)
@click.option("--secret-stdin", metavar="KEY", help="Set secret KEY from a line on stdin.")
@json_option
@pass_state
def add(
    state: CliState,
    name: str,
    connector: str,
    config_text: str | None,
    secret_env: tuple[str, ...],
    secret_stdin: str | None,
    as_json: bool,
) -> None:
    """Configure an instance NAME of a connector; its secrets are stored encrypted."""
    runtime = state.runtime()
    service = _instances(runtime, _registry(runtime))
    created = service.create(
        name,
        connector,
        _object(config_text, "--config"),
        _secrets(secret_env, secret_stdin),
        created_by=actor(),
    )
    if as_json:
        print_json(created.as_dict())
    else:
        click.echo(f"added {created.name} ({created.connector})")


@connector_group.command("update")
@click.argument("name")
@click.option("--config", "config_text", help="Settings to change (merged): JSON/YAML or @FILE.")
@click.option("--replace", is_flag=True, help="Replace the settings instead of merging.")
@click.option("--enable/--disable", "enabled", default=None, help="Turn the instance on or off.")
@json_option
@pass_state
def update(
    state: CliState,
    name: str,
    config_text: str | None,
    replace: bool,
    enabled: bool | None,
    as_json: bool,
) -> None:
    """Change an instance's settings, or turn it on or off."""
    runtime = state.runtime()
    service = _instances(runtime, _registry(runtime))
    config = _object(config_text, "--config") if config_text else None
    changed = service.update(name, config=config, replace=replace, enabled=enabled, by=actor())
    if as_json:
        print_json(changed.as_dict())
    else:
        click.echo(f"updated {changed.name}")


@connector_group.command("set-secret")
@click.argument("name")
@click.argument("key")
@click.option("--env", "variable", help="Read the value from this environment variable.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the value from stdin.")
@click.option("--clear", is_flag=True, help="Remove the secret.")
@pass_state
def set_secret(
    state: CliState, name: str, key: str, variable: str | None, from_stdin: bool, clear: bool
) -> None:
    """Set (or --clear) secret KEY of instance NAME; it is stored encrypted."""
    if sum([bool(variable), from_stdin, clear]) != 1:
        raise InvalidInput("give exactly one of --env VARIABLE, --stdin or --clear")
    value = None
    if not clear:
        pairs = (f"{key}={variable}",) if variable else ()
        value = _secrets(pairs, key if from_stdin else None)[key]
    runtime = state.runtime()
    _instances(runtime, _registry(runtime)).set_secret(name, key, value, by=actor())
    click.echo(f"{'cleared' if clear else 'set'} {name} secret {key}")


@connector_group.command("remove")
@click.argument("name")
@pass_state
def remove(state: CliState, name: str) -> None:
    """Delete instance NAME and its secrets."""
    runtime = state.runtime()
    _instances(runtime, _registry(runtime)).remove(name, by=actor())
    click.echo(f"removed {name}")


@connector_group.command("test")
@click.argument("name")
@pass_state
def test(state: CliState, name: str) -> None:
    """Run the health check of NAME (an instance, or a connector) against its peer."""
    runtime = state.runtime()
    registry = _registry(runtime)
    connector = registry.connectors.get(name)
    instance: str | None = None
    if connector is None:
        found = _instances(runtime, registry).get(name)
        connector, instance = registry.connectors[found.connector], found.name
    runner = _runner(runtime, registry)

    async def check() -> str:
        try:
            return await runner.health(connector, instance)
        finally:
            await runner.aclose()

    try:
        said = _run_async(runtime, check())
    except ActionError as exc:
        click.echo(f"{name}: FAILED: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"{name}: ok: {said}")


@click.group("action")
def action_group() -> None:
    """Call a connector action by hand."""


@action_group.command("run")
@click.argument("key")
@click.option("--input", "input_text", help="The action's input: JSON/YAML object or @FILE.")
@click.option("--instance", help="The configured instance to use (default: see docs).")
@click.option("--dry-run", is_flag=True, help="Validate; writes only pretend (or are not sent).")
@json_option
@pass_state
def run(
    state: CliState,
    key: str,
    input_text: str | None,
    instance: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Call action KEY (``connector.action``) once and print its output."""
    runtime = state.runtime()
    registry = _registry(runtime)
    runner = _runner(runtime, registry)
    inputs = _object(input_text, "--input")

    async def call() -> dict[str, Any]:
        try:
            return await runner.run_once(
                key, inputs, dry_run=dry_run, instance=instance, actor=actor()
            )
        finally:
            await runner.aclose()

    try:
        output = _run_async(runtime, call())
    except ActionError as exc:
        said = exc.message if exc.message.startswith(f"{key}:") else f"{key}: {exc.message}"
        click.echo(f"error: {said}", err=True)  # the action named once
        sys.exit(1)
    if as_json:
        print_json(output)
        return
    for field, value in output.items():
        click.echo(f"{field}: {value}")


@click.group("containment")
def containment_group() -> None:
    """What runs and people contained (blocked, isolated, disabled), and undoing it."""


@containment_group.command("list")
@click.option("--all", "include_reverted", is_flag=True, help="Include reverted ones.")
@json_option
@pass_state
def list_containments(state: CliState, include_reverted: bool, as_json: bool) -> None:
    """Containments in place, and reverts that failed (retried until they succeed)."""
    found = state.runtime().containments.list_all(include_reverted=include_reverted)
    if as_json:
        print_json([item.as_dict() for item in found])
        return
    print_table(
        ["ID", "STATUS", "ACTION", "TARGET", "BY", "SINCE", "UNTIL", "LAST ERROR"],
        [
            [
                item.id, item.status.value, item.action,
                json.dumps(item.target, sort_keys=True)[:60], item.created_by,
                show_time(item.created_at), show_time(item.expires_at),
                (item.last_error or {}).get("message", "-")[:60],
            ]
            for item in found
        ],
    )  # fmt: skip


@containment_group.command("revert")
@click.argument("containment_id")
@json_option
@pass_state
def revert(state: CliState, containment_id: str, as_json: bool) -> None:
    """Undo CONTAINMENT_ID now with its revert action."""
    runtime = state.runtime()
    runner = _runner(runtime, _registry(runtime))

    async def undo() -> Any:
        try:
            return await runtime.containments.revert(runner, containment_id, by=actor())
        finally:
            await runner.aclose()

    after = _run_async(runtime, undo())
    if as_json:
        print_json(after.as_dict())
    elif after.status.value == "reverted":
        click.echo(f"reverted {after.id} ({after.revert_action})")
    else:
        message = (after.last_error or {}).get("message", "unknown error")
        click.echo(f"revert of {after.id} failed: {message} (tried again later)", err=True)
    if after.status.value != "reverted":
        sys.exit(1)
