"""``quell role``: the built-in roles and custom ones made from the permission list."""

from __future__ import annotations

import click

from quell.cli.output import json_option, print_json, print_table
from quell.cli.state import CliState, pass_state


@click.group("role")
def role_group() -> None:
    """Roles: the built-in ones, and custom ones made from the permission list."""


@role_group.command("list")
@json_option
@pass_state
def list_roles(state: CliState, as_json: bool) -> None:
    """Every role and what it may do."""
    found = state.runtime().roles.list_all()
    if as_json:
        print_json([role.as_dict() for role in found])
        return
    print_table(
        ["ROLE", "KIND", "PERMISSIONS"],
        [
            [r.name, "built-in" if r.builtin else "custom", " ".join(r.as_dict()["permissions"])]
            for r in found
        ],
    )


@role_group.command("permissions")
def list_permissions() -> None:
    """Every permission a custom role can be made from."""
    from quell.governance.permissions import Permission

    for permission in Permission:
        click.echo(permission.value)


@role_group.command("set")
@click.argument("name")
@click.argument("permissions", nargs=-1, required=True)
@click.option("--description", help="What the role is for.")
@json_option
@pass_state
def set_role(
    state: CliState, name: str, permissions: tuple[str, ...], description: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Create or change custom role NAME with PERMISSIONS (quell role permissions)."""
    role = state.runtime().roles.define(
        name, permissions, description=description, by=state.operator
    )
    if as_json:
        print_json(role.as_dict())
        return
    click.echo(f"role {role.name}: {' '.join(role.as_dict()['permissions'])}")


@role_group.command("remove")
@click.argument("name")
@pass_state
def remove_role(state: CliState, name: str) -> None:
    """Delete a custom role nobody holds."""
    state.runtime().roles.remove(name, by=state.operator)
    click.echo(f"role {name} removed")
