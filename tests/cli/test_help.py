"""Every command is documented and answers --help."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from quell import __version__
from quell.cli import cli


def _subcommand(group: click.Group, name: str) -> click.Command:
    """A subcommand as click finds it, loading its module when the group loads on demand."""
    command = group.get_command(click.Context(group), name)
    assert command is not None, name
    return command


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name in group.list_commands(click.Context(group)):
        command = _subcommand(group, name)
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


ALL_COMMANDS = list(_commands(cli))


def test_root_help_lists_every_group() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for group in ("db", "token", "config", "serve", "demo", "version"):
        assert f"  {group} " in result.output


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=[" ".join(p) for p in ALL_COMMANDS])
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = _subcommand(command, name)
    assert command.help, f"quell {' '.join(path)} has no help"
    assert len(command.help.strip()) > 10
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"quell {' '.join(path)} {param.opts[0]} has no help"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output


def test_version_command_and_flag() -> None:
    assert CliRunner().invoke(cli, ["version"]).output == f"quell {__version__}\n"
    assert CliRunner().invoke(cli, ["--version"]).output == f"quell {__version__}\n"
