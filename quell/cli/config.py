"""``quell config``: the settings in effect."""

from __future__ import annotations

import click

from quell.cli.output import json_option, print_json, print_table
from quell.cli.state import CliState, pass_state
from quell.settings import ENV_PREFIX


@click.group("config")
def group() -> None:
    """Inspect settings."""


@group.command("show")
@json_option
@pass_state
def show(state: CliState, as_json: bool) -> None:
    """Show every setting in effect (secrets redacted) and the config file read."""
    from quell.store.database import hide_password

    settings = state.settings
    values = settings.model_dump(mode="json")
    values["database_url"] = hide_password(settings.resolved_database_url)
    if settings.secret_key is None:
        values["secret_key"] = "(from DATA_DIR/secret.key)"
    config_file = settings.config_file
    if as_json:
        print_json({"config_file": str(config_file) if config_file else None, "settings": values})
        return
    click.echo(f"config file: {config_file or '(none)'}")
    print_table(
        ["SETTING", "ENV", "VALUE"],
        [[name, f"{ENV_PREFIX}{name.upper()}", value] for name, value in values.items()],
    )
