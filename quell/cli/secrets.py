"""``quell secrets status|rotate-key``: the data keys that seal secrets at rest, and rotating
them (:mod:`quell.governance.rotation`)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import click

from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.playbooks import actor
from quell.cli.state import CliState, pass_state

# A crash-test hook: kill this process (SIGKILL, no clean-up) once this many values are
# re-sealed (0: right after the new key is committed). tests/governance/test_rotation.py uses
# it to crash a real rotation mid-way.
CRASH_AFTER_ENV = "QUELL_CRASH_AFTER_RESEALS"


@click.group("secrets")
def secrets_group() -> None:
    """Secrets at rest: the data keys that seal them, and rotating those keys."""


@secrets_group.command("status")
@json_option
@pass_state
def show_status(state: CliState, as_json: bool) -> None:
    """Each data key, its state and how many stored secrets it sealed (never a value)."""
    from quell.governance.rotation import status

    runtime = state.runtime()
    found = status(runtime.secret_box, runtime.db)
    if as_json:
        print_json(found.as_dict())
        return
    totals = found.totals()
    print_table(
        ["KEY", "KIND", "STATE", "CREATED", "RETIRED", "VALUES"],
        [
            [
                record.id,
                record.kind.value,
                record.state.value,
                show_time(record.created_at),
                show_time(record.retired_at),
                totals.get(record.id, 0),
            ]
            for record in found.keys
        ],
    )
    for key, count in sorted(found.unknown().items()):
        click.echo(f"{count} value(s) under {key}, a key this database does not hold")
    if found.rotating:
        click.echo("a rotation is unfinished: run quell secrets rotate-key to finish it")


@secrets_group.command("rotate-key")
@json_option
@pass_state
def rotate_key(state: CliState, as_json: bool) -> None:
    """Seal every stored secret under a new data key, then retire the old key.

    Each secret is re-sealed in its own transaction; a run that was interrupted is finished by
    running the command again (it never starts a second rotation over an unfinished one).
    """
    from quell.governance.rotation import rotate

    runtime = state.runtime()
    crash_after = os.environ.get(CRASH_AFTER_ENV)
    result = rotate(
        runtime.secret_box,
        runtime.db,
        runtime.audit,
        actor=actor(),
        after_each=_crash_after(int(crash_after)) if crash_after else None,
    )
    if as_json:
        print_json(result.as_dict())
    else:
        verb = "finished the rotation from" if result.resumed else "rotated data key"
        where = ", ".join(f"{name} {count}" for name, count in result.resealed.items() if count)
        click.echo(
            f"{verb} {result.old_key} to {result.new_key}: "
            f"{result.total_resealed} secret(s) re-sealed" + (f" ({where})" if where else "")
        )
        if result.other_keys:
            click.echo(
                f"{result.other_keys} stored value(s) are under a key this database does not "
                "hold: they cannot be opened; set them again"
            )
        if result.retired:
            click.echo(f"key {result.old_key} retired")
    if not result.retired:
        listed = "; ".join(result.not_opening) or "values kept changing during the rotation"
        click.echo(
            f"error: key {result.old_key} is still in use and stays: {listed}. Set those "
            "secrets again (or clear them), then run quell secrets rotate-key again",
            err=True,
        )
        sys.exit(1)


def _crash_after(limit: int) -> Callable[[int], None]:
    def check(count: int) -> None:
        if count >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    return check
