"""The runtime: what a process (server, worker, CLI command) holds once it has started.

It is built explicitly from settings and passed down; nothing here is global. Opening it makes
sure the data directory and secret key exist, connects the database and brings its schema to
this version (or refuses to run against another one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import TracebackType
from typing import Self

from quell.clock import SYSTEM_CLOCK, Clock
from quell.datadir import ensure_data_dir, load_or_create_secret_key
from quell.governance.tokens import TokenService
from quell.sdk.secret import SecretValue
from quell.settings import Settings
from quell.store import migrate
from quell.store.database import Database


@dataclass
class Runtime:
    """Settings, clock, secret key, database and the services built on them."""

    settings: Settings
    db: Database
    secret_key: SecretValue
    clock: Clock = field(default=SYSTEM_CLOCK)

    @classmethod
    def open(
        cls, settings: Settings, *, clock: Clock = SYSTEM_CLOCK, migrate_schema: bool = True
    ) -> Runtime:
        """Prepare the data dir and key, connect, and check (or upgrade) the schema."""
        ensure_data_dir(settings.data_dir)
        secret_key = load_or_create_secret_key(settings.data_dir, settings.secret_key)
        db = Database(
            settings.resolved_database_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            pool_size=settings.database_pool_size,
        )
        try:
            if migrate_schema:
                migrate.ensure_schema(db, auto_migrate=settings.auto_migrate)
        except BaseException:
            db.dispose()
            raise
        return cls(settings=settings, db=db, secret_key=secret_key, clock=clock)

    @cached_property
    def tokens(self) -> TokenService:
        """API tokens."""
        return TokenService(self.db, self.clock)

    def close(self) -> None:
        """Release the database connections."""
        self.db.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
