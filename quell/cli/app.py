"""The ``quell`` command: a root with global options and one module per command group.

Command modules load on demand: ``quell alert list`` imports ``quell.cli.alerts`` and what it
needs, not the connectors, the API or the intel importers. ``quell --help``, which shows every
group's summary, loads them all.

Expected errors (every :class:`~quell.errors.QuellError`) become one line on stderr,
``error: <message>``, and exit code 1. Usage errors exit with 2, as click does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click

from quell import __version__
from quell.cli.state import CliState
from quell.errors import QuellError
from quell.logs import configure_logging
from quell.settings import LogFormat, LogLevel


class QuellCliError(click.ClickException):
    """A QuellError, shown as one line."""

    exit_code = 1

    def __init__(self, error: QuellError) -> None:
        super().__init__(error.message)
        self.error = error

    def show(self, file: IO[Any] | None = None) -> None:
        """``error: <message>`` on stderr."""
        click.echo(f"error: {self.error.message}", file=file, err=file is None)


def _attribute(target: str) -> Callable[[], click.Command]:
    """A loader for ``module:attribute``."""

    def load() -> click.Command:
        module, _, name = target.partition(":")
        command = getattr(importlib.import_module(module), name)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    return load


def _incident_group() -> click.Command:
    """``quell incident``: the reads from the alerts module, the case work from the cases one."""
    from quell.cli import alerts, cases

    for command in cases.COMMANDS:
        alerts.incident_group.add_command(command)
    return alerts.incident_group


LAZY_COMMANDS: dict[str, Callable[[], click.Command]] = {
    "db": _attribute("quell.cli.db:group"),
    "token": _attribute("quell.cli.token:group"),
    "user": _attribute("quell.cli.user:group"),
    "config": _attribute("quell.cli.config:group"),
    "ingest": _attribute("quell.cli.ingest:group"),
    "source": _attribute("quell.cli.sources:source_group"),
    "suppression": _attribute("quell.cli.sources:suppression_group"),
    "alert": _attribute("quell.cli.alerts:alert_group"),
    "incident": _incident_group,
    "playbook": _attribute("quell.cli.playbooks:playbook_group"),
    "run": _attribute("quell.cli.playbooks:run_group"),
    "approval": _attribute("quell.cli.approvals:approval_group"),
    "role": _attribute("quell.cli.roles:role_group"),
    "task": _attribute("quell.cli.playbooks:task_group"),
    "worker": _attribute("quell.cli.playbooks:worker_command"),
    "connector": _attribute("quell.cli.connectors:connector_group"),
    "action": _attribute("quell.cli.connectors:action_group"),
    "containment": _attribute("quell.cli.connectors:containment_group"),
    "guardrail": _attribute("quell.cli.guardrails:guardrail_group"),
    "audit": _attribute("quell.cli.audit:audit_group"),
    "secrets": _attribute("quell.cli.secrets:secrets_group"),
    "intel": _attribute("quell.cli.intel:intel_group"),
    "sla": _attribute("quell.cli.sla:sla_group"),
    "serve": _attribute("quell.cli.serve:serve_command"),
    "demo": _attribute("quell.cli.serve:demo_command"),
}
"""Every command group by name, loaded when it is first asked for."""


class QuellGroup(click.Group):
    """The root group: loads command modules on demand, and turns a QuellError from any
    command into a QuellCliError."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name, loaded or not, sorted as click sorts them."""
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command by name, importing its module the first time."""
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            command = LAZY_COMMANDS[cmd_name]()
            if command.name != cmd_name:
                raise RuntimeError(f"{cmd_name!r} loaded a command named {command.name!r}")
            self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; map expected errors to one clear line."""
        try:
            return super().invoke(ctx)
        except QuellError as exc:
            raise QuellCliError(exc) from None


@click.group(
    cls=QuellGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--log-format",
    type=click.Choice([f.value for f in LogFormat]),
    envvar="QUELL_LOG_FORMAT",
    help="human (default) or json log lines.",
)
@click.option(
    "--log-level",
    type=click.Choice([level.value for level in LogLevel]),
    envvar="QUELL_LOG_LEVEL",
    help="Least severe level logged (default info).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML settings file (default: $QUELL_CONFIG_FILE, else DATA_DIR/quell.toml).",
)
@click.version_option(__version__, "--version", prog_name="quell", message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context, log_format: str | None, log_level: str | None, config_file: Path | None
) -> None:
    """Quell: incident response orchestration. Alerts in, incidents out, playbooks run."""
    state = CliState(
        config_file=config_file,
        log_format=LogFormat(log_format) if log_format else None,
        log_level=LogLevel(log_level) if log_level else None,
    )
    ctx.obj = state
    ctx.call_on_close(state.close)
    configure_logging(state.log_format or LogFormat.HUMAN, state.log_level or LogLevel.INFO)


@cli.command("version")
def version_command() -> None:
    """Print the version of Quell."""
    click.echo(f"quell {__version__}")
