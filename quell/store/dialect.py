"""Statements whose SQL differs between SQLite and PostgreSQL, behind one function each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from quell.store.database import Backend


def upsert(
    backend: Backend,
    table: Table,
    *,
    keys: Iterable[str],
    update: Mapping[str, Any] | Iterable[str],
) -> Insert:
    """``INSERT … ON CONFLICT (keys) DO UPDATE``; both backends spell it the same way.

    ``update`` is either column names, set from the row being inserted (``excluded``), or a
    mapping of column name to SQL expression built from ``upsert_excluded(table)``.
    """
    statement = postgresql.insert(table) if backend is Backend.POSTGRESQL else sqlite.insert(table)
    if isinstance(update, Mapping):
        values = dict(update)
    else:
        values = {name: statement.excluded[name] for name in update}
    return statement.on_conflict_do_update(index_elements=list(keys), set_=values)


def insert_ignore(backend: Backend, table: Table, *, keys: Iterable[str]) -> Insert:
    """``INSERT … ON CONFLICT (keys) DO NOTHING``."""
    statement = postgresql.insert(table) if backend is Backend.POSTGRESQL else sqlite.insert(table)
    return statement.on_conflict_do_nothing(index_elements=list(keys))
