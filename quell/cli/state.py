"""What every CLI command shares: settings read once, a runtime opened once and closed after.

Command modules import the heavy stacks (SQLAlchemy, Alembic, FastAPI, uvicorn) inside the
commands that need them, so that help and version answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from quell.logs import configure_logging
from quell.settings import LogFormat, LogLevel, Settings, load_settings

if TYPE_CHECKING:
    from quell.runtime import Runtime


@dataclass
class CliState:
    """Global options, and the settings and runtime built from them on first use."""

    config_file: Path | None = None
    log_format: LogFormat | None = None
    log_level: LogLevel | None = None
    _settings: Settings | None = field(default=None, repr=False)
    _runtime: Runtime | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        """Settings from flags, environment and config file; logging follows them."""
        if self._settings is None:
            self._settings = load_settings(self.config_file)
            configure_logging(
                self.log_format or self._settings.log_format,
                self.log_level or self._settings.log_level,
            )
        return self._settings

    def runtime(self, *, migrate_schema: bool = True) -> Runtime:
        """The runtime (data dir, key, database), opened on first use."""
        if self._runtime is None:
            # Imported here: `quell --help` and `quell version` need no database stack.
            from quell.runtime import Runtime

            self._runtime = Runtime.open(self.settings, migrate_schema=migrate_schema)
        return self._runtime

    @property
    def operator(self) -> str:
        """Who acts at the CLI, as the audit trail names them: ``cli:<account>``."""
        import getpass

        try:
            return f"cli:{getpass.getuser()}"
        except (KeyError, OSError):
            return "cli"

    def audit(self, action: str, subject: str | None, detail: dict[str, Any] | None = None) -> None:
        """Record a change made at the CLI in the audit trail, as the operator."""
        self.runtime().audit.record(self.operator, action, subject, detail or {})

    def close(self) -> None:
        """Release what was opened."""
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None


pass_state = click.make_pass_decorator(CliState, ensure=True)
