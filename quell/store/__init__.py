"""Storage: SQLAlchemy 2.0 Core on SQLite (WAL) or PostgreSQL, with Alembic migrations."""

from quell.store.database import Backend, Database
from quell.store.group_commit import GroupCommitter

__all__ = ["Backend", "Database", "GroupCommitter"]
