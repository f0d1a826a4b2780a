"""``quell db``: the database schema."""

from __future__ import annotations

import click

from quell.cli.output import json_option, print_json, print_table
from quell.cli.state import CliState, pass_state


@click.group("db")
def group() -> None:
    """Create and migrate the database schema."""


@group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_state
def upgrade(state: CliState, revision: str) -> None:
    """Apply pending migrations. Running it again changes nothing."""
    from quell.store import migrate

    runtime = state.runtime(migrate_schema=False)
    before, after = migrate.upgrade(runtime.db, revision)
    where = runtime.db.display_url
    if before == after:
        click.echo(f"Database {where} is already at {after or 'base'}; nothing to do.")
    else:
        click.echo(f"Database {where} upgraded from {before or 'base'} to {after}.")


@group.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def downgrade(state: CliState, revision: str, yes: bool) -> None:
    """Revert migrations down to REVISION ('base' empties the schema). Dropped tables lose data."""
    from quell.store import migrate

    runtime = state.runtime(migrate_schema=False)
    if not yes:
        click.confirm(
            f"Downgrade {runtime.db.display_url} to {revision}? Dropped tables lose their data",
            abort=True,
        )
    before, after = migrate.downgrade(runtime.db, revision)
    click.echo(f"Database {runtime.db.display_url} downgraded from {before} to {after or 'base'}.")


@group.command("status")
@json_option
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """Show the schema revision and whether it is current."""
    from quell.store import migrate

    runtime = state.runtime(migrate_schema=False)
    schema = migrate.state(runtime.db)
    report = {
        "database": runtime.db.display_url,
        "backend": runtime.db.backend.value,
        "current": schema.current,
        "head": schema.head,
        "status": schema.status.value,
    }
    if as_json:
        print_json(report)
        return
    for key, value in report.items():
        click.echo(f"{key:<9} {value or 'base'}")


@group.command("history")
@json_option
def history(as_json: bool) -> None:
    """List the migrations, oldest first."""
    from quell.store import migrate

    revisions = migrate.history()
    if as_json:
        print_json([{"id": r.id, "down": r.down, "message": r.message} for r in revisions])
        return
    print_table(
        ["REVISION", "AFTER", "DESCRIPTION"],
        [
            [r.id, r.down or "base", r.message.splitlines()[0] if r.message else ""]
            for r in revisions
        ],
    )
