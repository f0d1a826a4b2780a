"""Invoking the CLI in-process; tests/cli/processes.py runs it as a real child process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from quell.cli import cli

Invoke = Callable[..., Result]


@pytest.fixture
def invoke() -> Invoke:
    """``invoke("token", "list", env={...})``: run ``quell`` in this process."""

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)

    return run
