"""Shared fixtures. Kept small: the heavier ones live in tests/fixtures/."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from quell.clock import ManualClock
from quell.governance.permissions import Role
from quell.runtime import Runtime
from quell.settings import load_settings

pytest_plugins = [
    "tests.fixtures.requirements",
    "tests.fixtures.databases",
    "tests.fixtures.servers",
    "tests.ingest.dovecot",
]

# Variables that steer the test run itself, not the Quell under test.
_TEST_ENV = {"QUELL_TEST_POSTGRES_URL", "QUELL_CORPUS", "QUELL_REQUIRE_ALL", "QUELL_CRASH_SEED"}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's QUELL_* settings or writes into the checkout's .quell."""
    for name in list(os.environ):
        if name.startswith("QUELL_") and name not in _TEST_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setenv("QUELL_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process (click's CliRunner) configures logging to the
    runner's own stream; later tests' logs went there, out of sight. Each test leaves logging
    as it found it."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers, root.level = handlers, level


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
def runtime(database_url: str, tmp_path: Path, clock: ManualClock) -> Iterator[Runtime]:
    """A runtime on the backend under test, with a manual clock. Its playbooks are published
    by whoever adds them (``playbook_review = "optional"``): the tests of the review workflow
    itself (tests/api/test_publishing_api.py) ask for it."""
    settings = load_settings(
        data_dir=tmp_path / "data", database_url=database_url, playbook_review="optional"
    )
    with Runtime.open(settings, clock=clock) as opened:
        yield opened


@pytest.fixture
def role_tokens(runtime: Runtime) -> dict[Role, str]:
    """One bearer token per built-in role."""
    return {
        role: runtime.tokens.create(f"test-{role.value}", role.value)[1].reveal() for role in Role
    }
