"""``quell token``: API tokens."""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Any

import click

from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state
from quell.durations import parse_duration

if TYPE_CHECKING:
    from quell.governance.tokens import ApiToken


@click.group("token")
def group() -> None:
    """Create, list and revoke API tokens."""


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return "cli"


def _as_dict(token: ApiToken, status: str) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role,
        "status": status,
        "hint": token.hint,
        "created_at": token.created_at,
        "created_by": token.created_by,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
        "revoked_at": token.revoked_at,
        "user": token.user,
    }


@group.command("create")
@click.option("--name", required=True, help="A unique name, e.g. siem-webhook.")
@click.option(
    "--role",
    help="What the token may do: a built-in or custom role (required unless --user is given).",
)
@click.option("--expires-in", help="Lifetime such as 90d or 12h; no expiry by default.")
@click.option(
    "--user",
    help="The user the token belongs to: it acts with their current role and is refused "
    "while they are disabled.",
)
@pass_state
def create(
    state: CliState, name: str, role: str | None, expires_in: str | None, user: str | None
) -> None:
    """Create a token and print it once, alone on the last line of output."""
    if role is None and user is None:
        raise click.UsageError("give --role, or --user (the token then has the user's role)")
    lifetime = parse_duration(expires_in, field="--expires-in") if expires_in else None
    runtime = state.runtime()
    record, token = runtime.tokens.create(
        name, role or "", created_by=_cli_actor(), expires_in=lifetime, user=user
    )
    state.audit(
        "token.create", f"token:{record.name}",
        {"role": record.role, "user": record.user, "expires_at": record.expires_at},
    )  # fmt: skip
    expiry = f", expires {show_time(record.expires_at)}" if record.expires_at else ""
    owner = f" for user {record.user!r}" if record.user else ""
    click.echo(
        f"Created token {record.name!r}{owner} with role {record.role}{expiry}. "
        "Store it now: it cannot be shown again.",
        err=True,
    )
    click.echo(token.reveal())


@group.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@json_option
@pass_state
def list_tokens(state: CliState, include_revoked: bool, as_json: bool) -> None:
    """List tokens: name, role, status, created, last used."""
    runtime = state.runtime()
    tokens = runtime.tokens.list_all(include_revoked=include_revoked)
    now = runtime.clock.now()
    if as_json:
        print_json([_as_dict(token, token.status(now)) for token in tokens])
        return
    print_table(
        ["NAME", "ROLE", "STATUS", "CREATED", "LAST USED", "EXPIRES", "HINT"],
        [
            [
                token.name,
                token.role,
                token.status(now),
                show_time(token.created_at),
                show_time(token.last_used_at) if token.last_used_at else "never",
                show_time(token.expires_at),
                f"...{token.hint}",
            ]
            for token in tokens
        ],
    )


@group.command("revoke")
@click.argument("name")
@pass_state
def revoke(state: CliState, name: str) -> None:
    """Revoke the token NAME. It is refused from the next request on."""
    record = state.runtime().tokens.revoke(name)
    state.audit("token.revoke", f"token:{name}")
    click.echo(f"Revoked token {record.name!r}.")
