"""``quell approval``: list and decide approvals, send signed links, and set the approval
policy (``quell approval rule …``).

A decision at the CLI is made as a Quell user: ``--as NAME`` signs in with their password, or
the operating-system account names the person (see :func:`acting_user`). Their role must be one
the approval names, and the separation-of-duties and one-decision-per-person rules hold as they
do in the API. With no such user, the decision is the operator's (``cli:<account>``, with the
admin role), still under separation of duties.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state
from quell.durations import parse_duration
from quell.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from quell.governance.permissions import Permission
from quell.sdk.secret import SecretValue

if TYPE_CHECKING:
    from quell.governance.users import User


@click.group("approval")
def approval_group() -> None:
    """List and decide approvals; send approval links; set the approval policy."""


def _decider(state: CliState, as_user: str | None) -> tuple[str, str]:
    """Who decides an approval, and with which role."""
    return acting_user(state, as_user, Permission.APPROVALS_DECIDE)


def _has_terminal() -> bool:
    """Whether this process has a controlling terminal to ask a password on."""
    try:
        with open("/dev/tty", "rb"):  # noqa: PTH123 - a device, opened only to see that it can be
            return True
    except OSError:
        return False


def acting_user(state: CliState, as_user: str | None, permission: Permission) -> tuple[str, str]:
    """Who acts at the CLI, with which role, holding ``permission``.

    ``--as USER`` signs in as that Quell user: their password is asked for (read from stdin
    when it is not a terminal), checked and rate-limited like any login, and the login is
    audited. Without it, the operating-system account (by user id, not by environment) is the
    person: a Quell user of that name acts with their role; else the operator, ``cli:<account>``
    with the admin role. Either way one person counts once in four-eyes checks.
    """
    runtime = state.runtime()
    user: User | None
    if as_user:
        if sys.stdin.isatty() or _has_terminal():
            # getpass asks on the terminal, even when stdin is a pipe (a loop reading ids)
            password = click.prompt(
                f"password of {as_user}", hide_input=True, err=True, show_default=False
            )
        else:  # no terminal (a script, CI): one line, without getpass's echo warning
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise InvalidInput(f"no password of {as_user} on stdin", field="password")
        token, session = runtime.users.login(as_user, SecretValue(password), client="cli")
        del token
        runtime.users.logout(session.id, by=as_user)  # only the check was wanted
        user = runtime.users.get(as_user)
        name: str | None = user.name
    else:
        name = _account()
        try:
            user = runtime.users.get(name) if name else None
        except NotFound:
            user = None
    if user is None:
        return f"cli:{name}" if name else "cli", "admin"
    if user.disabled_at is not None:
        raise PermissionDenied(f"user {user.name!r} is disabled")
    if permission not in runtime.permissions_of(user.role):
        raise PermissionDenied(
            f"role {user.role!r} of {user.name!r} lacks the permission {permission.value!r}",
            permission=permission.value,
        )
    return user.name, user.role


def _account() -> str | None:
    """The operating-system account this process runs as (by uid: not from the environment)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


@approval_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Decided ones too.")
@json_option
@pass_state
def list_approvals(state: CliState, show_all: bool, as_json: bool) -> None:
    """Approvals waiting for a decision."""
    runtime = state.runtime()
    found = runtime.waits().list_all(kind="approval", status=None if show_all else "pending")
    if as_json:
        print_json([wait.as_dict() for wait in found])
        return
    print_table(
        ["ID", "RUN", "STEP", "STATUS", "APPROVALS", "EXPIRES", "PROMPT"],
        [
            [
                w.id, w.run_id, w.step_key, w.status,
                f"{sum(1 for v in w.votes if v['approved'])}/{w.required}",
                show_time(w.expires_at), w.prompt or "",
            ]
            for w in found
        ],
    )  # fmt: skip


def _decide(
    state: CliState, wait_id: str, comment: str, as_user: str | None, approved: bool
) -> None:
    who, role = _decider(state, as_user)
    service = state.runtime().waits()
    decided = service.decide(wait_id, who, role, comment, approved=approved, via="cli")
    if decided.status == "pending":
        have = sum(1 for vote in decided.votes if vote["approved"])
        click.echo(f"{decided.id}: approved by {who}; {have} of {decided.required} approvals")
        return
    click.echo(
        f"{decided.id}: {decided.status} (run {decided.run_id} goes on when a worker takes it)"
    )


_COMMENT = click.option("--comment", "-m", required=True, help="Why (every decision says why).")
_AS = click.option(
    "--as", "as_user", metavar="USER", help="Decide as this Quell user (asks their password)."
)


@approval_group.command("approve")
@click.argument("wait_id")
@_COMMENT
@_AS
@pass_state
def approve(state: CliState, wait_id: str, comment: str, as_user: str | None) -> None:
    """Approve (the step goes on once enough people have)."""
    _decide(state, wait_id, comment, as_user, True)


@approval_group.command("reject")
@click.argument("wait_id")
@_COMMENT
@_AS
@pass_state
def reject(state: CliState, wait_id: str, comment: str, as_user: str | None) -> None:
    """Reject: the waiting step fails."""
    _decide(state, wait_id, comment, as_user, False)


@approval_group.command("link")
@click.argument("wait_id")
@click.option("--user", "user", required=True, help="The approver the link is for.")
@click.option("--via", help="A notify (chat) or mail instance to send it through.")
@click.option("--ttl", help="How long it works (default 24h, at most 7d).")
@click.option(
    "--as", "as_user", metavar="USER", help="Ask as this Quell user (asks their password)."
)
@pass_state
def link(
    state: CliState, wait_id: str, user: str, via: str | None, ttl: str | None,
    as_user: str | None,
) -> None:  # fmt: skip
    """Make a signed, single-use approval link for USER and send it with --via; a link is
    printed only to USER themselves (signed in with --as USER, or their own account)."""
    from quell.governance import approval_links

    runtime = state.runtime()
    life: timedelta | None = parse_duration(ttl, field="ttl") if ttl else None
    # Sending a link to someone is runs:control's (as through the API); asking for one's own,
    # approvals:decide's.
    needed = Permission.RUNS_CONTROL if via is not None else Permission.APPROVALS_DECIDE
    asker, _role = acting_user(state, as_user, needed)
    if via is None and asker != user:
        # Printed, it would let whoever runs this decide as USER, under USER's name.
        raise Conflict(
            f"a link is {user}'s credential: send it through an instance (--via), or ask for "
            f"your own (--as {user})",
            field="via",
        )
    waits = runtime.waits()
    links = runtime.approval_links(waits)
    operator = asker
    instance = runtime.connector_instances.get(via) if via else None
    channel = f"{instance.connector}:{via}" if instance is not None else None
    made = links.create(wait_id, user, by=operator, ttl=life, sent_via=channel)
    if via is None or instance is None:
        click.echo(made.url)
        return
    email = runtime.users.get(user).email
    runner = runtime.action_runner(operator)

    async def deliver() -> None:
        try:
            await approval_links.send(
                runner, instance.connector, via, made, waits.get(wait_id), email=email,
                actor=operator, links=links,
            )  # fmt: skip
        finally:
            await runner.aclose()

    asyncio.run(deliver())
    click.echo(f"{made.id}: sent to {user} through {via}, works until {show_time(made.expires_at)}")


# -- the policy -------------------------------------------------------------------------------


@approval_group.group("rule")
def rule_group() -> None:
    """The approval policy: which writes need whose approval (first enabled match wins)."""


@rule_group.command("list")
@json_option
@pass_state
def list_rules(state: CliState, as_json: bool) -> None:
    """Every rule, in the order they are tried."""
    rules = state.runtime().approval_rules.list_all()
    if as_json:
        print_json([rule.as_dict() for rule in rules])
        return
    print_table(
        ["POS", "NAME", "ON", "MATCH", "APPROVALS", "ROLES", "EXPIRES", "ESCALATES TO"],
        [
            [
                r.position, r.name, "yes" if r.enabled else "no",
                ", ".join(f"{k}={v}" for k, v in r.as_dict()["match"].items()) or "every write",
                r.approvals, ", ".join(r.roles) or "any",
                f"{r.expires_after}s ({r.on_expiry.value})" if r.expires_after else "-",
                ", ".join(r.escalate_to) or "-",
            ]
            for r in rules
        ],
    )  # fmt: skip


@rule_group.command("set")
@click.argument("name")
@click.option("--risk", "risks", multiple=True, help="Matches these risks (repeat).")
@click.option("--action", "actions", multiple=True, help="Action keys, globs allowed (repeat).")
@click.option("--connector", "connectors", multiple=True, help="Connector names (repeat).")
@click.option("--asset-tag", "asset_tags", multiple=True, help="A named asset's tag (repeat).")
@click.option("--criticality", help="A named asset at least this critical.")
@click.option("--initiator", type=click.Choice(["automation", "person"]), help="Who started it.")
@click.option("--approvals", type=int, default=1, show_default=True, help="Distinct approvers.")
@click.option("--role", "roles", multiple=True, help="Roles that may decide (repeat).")
@click.option("--expires-after", help="How long it waits (4h).")
@click.option(
    "--on-expiry",
    type=click.Choice(["fail", "skip", "escalate"]),
    default="fail",
    show_default=True,
    help="What an expiry does (escalate: hand it on once).",
)
@click.option("--escalate-after", help="Widen to --escalate-to if undecided by then (1h).")
@click.option("--escalate-to", "escalate_to", multiple=True, help="Roles (repeat).")
@click.option("--position", type=int, help="Where in the order (lower is tried first).")
@click.option("--description", help="What it is for.")
@click.option("--disabled", is_flag=True, help="Store it switched off.")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False),
              help="Read the rule from a YAML or JSON file instead.")  # fmt: skip
@json_option
@pass_state
def set_rule(state: CliState, /, name: str, path: str | None, disabled: bool, as_json: bool,
             **options: Any) -> None:  # fmt: skip
    """Create or replace rule NAME."""
    if path is not None:
        from quell.playbooks.source import load_data

        data = load_data(Path(path).read_text(encoding="utf-8"), path)
        if not isinstance(data, dict):
            raise InvalidInput(f"{path}: a rule is a mapping", field="file")
        data = {**data, "name": name}
    else:
        match = {
            key: list(options[key])
            for key in ("risks", "actions", "connectors", "asset_tags")
            if options[key]
        }
        for key in ("criticality", "initiator"):
            if options[key]:
                match[key] = options[key]
        data = {"name": name, "match": match, "enabled": not disabled}
        for key in ("approvals", "expires_after", "on_expiry", "escalate_after", "position",
                    "description"):  # fmt: skip
            if options[key] is not None:
                data[key] = options[key]
        for key in ("roles", "escalate_to"):
            data[key] = list(options[key])
    from quell.governance.approvals import parse_rule

    rule = parse_rule(data)
    runtime = state.runtime()
    stored = runtime.approval_rules.put(rule, by=state.operator, known=runtime.registry)
    if as_json:
        print_json(stored.as_dict())
        return
    click.echo(f"approval rule {stored.name} set (position {stored.position})")


@rule_group.command("enable")
@click.argument("name")
@pass_state
def enable_rule(state: CliState, name: str) -> None:
    """Switch a rule on."""
    state.runtime().approval_rules.set_enabled(name, True, by=state.operator)
    click.echo(f"approval rule {name} on")


@rule_group.command("disable")
@click.argument("name")
@pass_state
def disable_rule(state: CliState, name: str) -> None:
    """Switch a rule off."""
    state.runtime().approval_rules.set_enabled(name, False, by=state.operator)
    click.echo(f"approval rule {name} off")


@rule_group.command("remove")
@click.argument("name")
@pass_state
def remove_rule(state: CliState, name: str) -> None:
    """Delete a rule."""
    state.runtime().approval_rules.remove(name, by=state.operator)
    click.echo(f"approval rule {name} removed")
