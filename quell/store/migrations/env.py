"""Alembic environment: always run on a connection that :mod:`quell.store.migrate` hands in.

Migrations are not run from an ``alembic.ini``; ``quell db upgrade`` opens one write transaction
(``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL) and runs every pending migration
inside it, so concurrent upgrades wait for each other and a failed one leaves nothing behind.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from quell.store.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through `quell db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
