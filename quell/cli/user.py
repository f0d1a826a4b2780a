"""``quell user``: local users (log in with ``POST /api/login``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state
from quell.cli.token import _cli_actor
from quell.errors import InvalidInput
from quell.sdk.secret import SecretValue

if TYPE_CHECKING:
    from quell.governance.users import User

# Built-in roles (admin, author, analyst, approver, auditor) or a custom one (quell role list).
_ROLES = click.STRING


@click.group("user")
def group() -> None:
    """Add, list, disable and enable users; set their role and password."""


def _read_password(from_stdin: bool) -> SecretValue:
    """The password from the first line of stdin, or typed twice at a hidden prompt."""
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise InvalidInput("no password on stdin", field="password")
        return SecretValue(value)
    if not sys.stdin.isatty():
        raise InvalidInput(
            "give the password with --password-stdin (standard input is not a terminal)",
            field="password",
        )
    typed: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return SecretValue(typed)


def _describe(user: User) -> str:
    return f"user {user.name!r} ({user.role}, {user.status})"


@group.command("add")
@click.argument("name")
@click.option(
    "--role", required=True, type=_ROLES, help="What the user may do (see quell role list)."
)
@click.option("--display-name", help="How the user is shown.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input. Without it the user has "
    "no password (no login) until `quell user set-password`.",
)
@pass_state
def add(
    state: CliState, name: str, role: str, display_name: str | None, password_stdin: bool
) -> None:
    """Add the user NAME."""
    password = _read_password(True) if password_stdin else None
    user = state.runtime().users.add(
        name, role, password=password, display_name=display_name, by=_cli_actor()
    )
    note = "" if user.has_password else "; no password yet (quell user set-password)"
    click.echo(f"Added {_describe(user)}{note}.")


@group.command("list")
@json_option
@pass_state
def list_users(state: CliState, as_json: bool) -> None:
    """List users: name, role, status, last login."""
    users = state.runtime().users.list_all()
    if as_json:
        print_json([user.as_dict() for user in users])
        return
    print_table(
        ["NAME", "ROLE", "STATUS", "PASSWORD", "LAST LOGIN", "CREATED"],
        [
            [
                user.name,
                user.role,
                user.status,
                "set" if user.has_password else "none",
                show_time(user.last_login_at) if user.last_login_at else "never",
                show_time(user.created_at),
            ]
            for user in users
        ],
    )


@group.command("disable")
@click.argument("name")
@pass_state
def disable(state: CliState, name: str) -> None:
    """Disable NAME: logins, sessions and their API tokens are refused at once."""
    user = state.runtime().users.disable(name, by=_cli_actor())
    click.echo(f"Disabled {_describe(user)}.")


@group.command("enable")
@click.argument("name")
@pass_state
def enable(state: CliState, name: str) -> None:
    """Enable NAME again."""
    user = state.runtime().users.enable(name, by=_cli_actor())
    click.echo(f"Enabled {_describe(user)}.")


@group.command("set-role")
@click.argument("name")
@click.argument("role", type=_ROLES)
@pass_state
def set_role(state: CliState, name: str, role: str) -> None:
    """Give NAME the role ROLE; it applies to their sessions and tokens at once."""
    user = state.runtime().users.set_role(name, role, by=_cli_actor())
    click.echo(f"Set {_describe(user)}.")


@group.command("set-email")
@click.argument("name")
@click.argument("email")
@pass_state
def set_email(state: CliState, name: str, email: str) -> None:
    """Set where NAME's approval links are mailed ('' clears it)."""
    user = state.runtime().users.set_email(name, email, by=_cli_actor())
    click.echo(f"{user.name}: e-mail {user.email or '(none)'}")


@group.command("set-password")
@click.argument("name")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input (else prompt, hidden).",
)
@pass_state
def set_password(state: CliState, name: str, password_stdin: bool) -> None:
    """Set NAME's password (at least 12 characters); their sessions are revoked."""
    password = _read_password(password_stdin)
    user = state.runtime().users.set_password(name, password, by=_cli_actor())
    click.echo(f"Set the password of {_describe(user)}; their sessions were ended.")
