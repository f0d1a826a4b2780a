"""The command line: ``quell <group> <command>``. A thin edge over the services."""

from quell.cli.app import cli


def main() -> None:
    """Entry point of the ``quell`` console script."""
    cli(prog_name="quell")


__all__ = ["cli", "main"]
