"""The ``quell`` command: a root with global options and one module per command group.

Expected errors (every :class:`~quell.errors.QuellError`) become one line on stderr,
``error: <message>``, and exit code 1. Usage errors exit with 2, as click does.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import click

from quell import __version__
from quell.cli import (
    alerts,
    approvals,
    audit,
    cases,
    config,
    connectors,
    db,
    guardrails,
    ingest,
    intel,
    playbooks,
    roles,
    secrets,
    serve,
    sla,
    sources,
    token,
    user,
)
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


class QuellGroup(click.Group):
    """The root group: turns a QuellError from any command into a QuellCliError."""

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


cli.add_command(db.group)
cli.add_command(token.group)
cli.add_command(user.group)
cli.add_command(config.group)
cli.add_command(ingest.group)
cli.add_command(sources.source_group)
cli.add_command(sources.suppression_group)
cli.add_command(alerts.alert_group)
cli.add_command(alerts.incident_group)
for _command in cases.COMMANDS:
    alerts.incident_group.add_command(_command)
cli.add_command(playbooks.playbook_group)
cli.add_command(playbooks.run_group)
cli.add_command(approvals.approval_group)
cli.add_command(roles.role_group)
cli.add_command(playbooks.task_group)
cli.add_command(playbooks.worker_command)
cli.add_command(connectors.connector_group)
cli.add_command(connectors.action_group)
cli.add_command(connectors.containment_group)
cli.add_command(guardrails.guardrail_group)
cli.add_command(audit.audit_group)
cli.add_command(secrets.secrets_group)
cli.add_command(intel.intel_group)
cli.add_command(sla.sla_group)
cli.add_command(serve.serve_command)
cli.add_command(serve.demo_command)
