"""``quell audit``: read the audit trail and check its hash chain."""

from __future__ import annotations

import sys

import click

from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state


@click.group("audit")
def audit_group() -> None:
    """The audit trail: who did what to which, and why."""


@audit_group.command("list")
@click.option("--action", help="Only actions starting with this (guardrail., connector.).")
@click.option("--subject", help="Only events about this (a run/step, an instance, ...).")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@json_option
@pass_state
def list_events(
    state: CliState, action: str | None, subject: str | None, limit: int, as_json: bool
) -> None:
    """Events, newest first."""
    found = state.runtime().audit.list_all(action=action, subject=subject, limit=limit)
    if as_json:
        print_json([event.as_dict() for event in found])
        return
    print_table(
        ["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT"],
        [[e.seq, show_time(e.at), e.actor, e.action, e.subject or "-"] for e in found],
    )


@audit_group.command("verify")
@pass_state
def verify(state: CliState) -> None:
    """Check the hash chain; exit 1 naming the first event that does not fit."""
    checked, broken = state.runtime().audit.verify()
    if broken is None:
        click.echo(f"audit trail intact: {checked} event(s) checked")
        return
    click.echo(f"audit trail BROKEN at event {broken} (after {checked} good ones)", err=True)
    sys.exit(1)
