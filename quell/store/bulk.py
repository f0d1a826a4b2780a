"""Bulk writes on the hot path: statements built once, rows handed to the driver as tuples.

SQLAlchemy's executemany runs every value of every row through its type's bind processor and
builds a parameter dictionary per row; at tens of thousands of rows a second (alerts, their
observables, correlation keys) that costs more than the database does. Here each statement
is rendered once for the backend, and values are converted the way SQLAlchemy itself stores
them, so that rows written here read back through the ordinary column types:

* ``UTCDateTime`` on SQLite: naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``; on PostgreSQL the
  aware datetime (``timestamptz``);
* ``JSON``: text from orjson (psycopg sends text with an unknown type, which PostgreSQL casts
  to ``jsonb``);
* everything else as it is.

SQLAlchemy renders each statement once, with the driver's positional parameter style.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, Connection, Table, bindparam, case, insert
from sqlalchemy import delete as sql_delete
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

from quell.codec import column_json
from quell.store.database import Backend, Database
from quell.store.types import UTCDateTime

Convert = Callable[[Any], Any]


_last_time: tuple[datetime | None, str | None] = (None, None)


def sqlite_time(value: datetime | None) -> str | None:
    """A UTCDateTime value as SQLite stores it: naive UTC text with microseconds."""
    global _last_time
    if value is None:
        return None
    last = _last_time  # a row's times are often one object (now): convert it once
    if last[0] is value:
        return last[1]
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTCDateTime column")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat is C and several times faster than strftime; the same text as SQLAlchemy
    # stores, once the "+00:00" is cut (cheaper than a naive copy of the value first).
    text = value.isoformat(" ", "microseconds")[:-6]
    _last_time = (value, text)
    return text


def _pg_time(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("naive datetime given to a UTCDateTime column")
    return value


def _json(value: Any) -> str | None:
    return None if value is None else column_json(value)


def _same(value: Any) -> Any:
    return value


class BulkStatement:
    """An INSERT (or upsert, or UPDATE) of fixed columns, run with executemany on tuples (or,
    for a plain INSERT of several rows through :meth:`run_cursor` on PostgreSQL, as COPY).

    Callers give each row's values in ``params`` order; they are converted per column and
    put in the order of the rendered statement's placeholders.
    """

    def __init__(
        self,
        db: Database,
        table: Table,
        params: Sequence[tuple[str, str]],
        statement: Any,
        *,
        copy: bool = False,
    ) -> None:
        self.sql, rendered = _render(db, statement)
        # A plain INSERT on PostgreSQL can go as COPY: one statement for the whole batch
        # instead of an execution per row (the server parses, plans and runs it once, and the
        # client writes rows in C), with the same all-or-nothing failure.
        self.copy_sql: str | None = None
        if copy and db.backend is Backend.POSTGRESQL:
            preparer = db.engine.dialect.identifier_preparer
            names = ", ".join(preparer.quote(table.c[name].name) for name in rendered)
            self.copy_sql = f"COPY {preparer.format_table(table)} ({names}) FROM STDIN"
        position = {param: index for index, (param, _column) in enumerate(params)}
        if sorted(rendered) != sorted(position):
            raise RuntimeError(f"statement parameters {rendered} differ from {list(position)}")
        self._order = tuple(position[param] for param in rendered)
        columns = [column for _param, column in params]
        converters: list[Convert] = []
        for name in columns:
            column_type = table.c[name].type
            if isinstance(column_type, UTCDateTime):
                converters.append(sqlite_time if db.backend is Backend.SQLITE else _pg_time)
            elif isinstance(column_type, JSON) or isinstance(
                getattr(column_type, "impl", None), JSON
            ):
                converters.append(_json)
            else:
                converters.append(_same)
        # Only the values that need it are converted (a call per value costs more than the
        # database does), and rows are reordered only when the statement wants another order.
        self._conversions = tuple(
            (index, convert) for index, convert in enumerate(converters) if convert is not _same
        )
        self._reorder = None if self._order == tuple(range(len(columns))) else self._order
        self._by_name = dict(zip(columns, converters, strict=True))

    @property
    def in_order(self) -> bool:
        """True when the statement takes its values in the order it was built with, so that
        :meth:`run_converted` can be given rows built in that order."""
        return self._reorder is None

    def convert(self, column: str, value: Any) -> Any:
        """``value`` converted as this statement converts ``column``."""
        return self._by_name[column](value)

    def run_converted(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Execute rows whose values are already converted and in placeholder order."""
        if rows:
            conn.exec_driver_sql(self.sql, rows)

    def run(self, conn: Connection, rows: Iterable[Sequence[Any]]) -> None:
        """Execute for every row (values in the order the statement was built with)."""
        prepared = self.prepare(rows)
        if prepared:
            conn.exec_driver_sql(self.sql, prepared)

    def run_cursor(self, cursor: Any, rows: Iterable[Sequence[Any]]) -> None:
        """Like :meth:`run`, on a DBAPI cursor of the transaction's connection (no
        SQLAlchemy dispatch per call: for writers that run thousands of batches a second).

        On PostgreSQL a plain INSERT of two rows or more goes as COPY, which has no casts:
        each value must already be of its column's Python type (str for text, int for
        integers, bool for booleans, aware datetimes for times; JSON columns are converted
        here), as the journal's rows are. A value of another type could be stored otherwise
        than the INSERT would store it, or refused (and the batch then fails as a whole)."""
        prepared = self.prepare(rows)
        if not prepared:
            return
        if self.copy_sql is not None and len(prepared) > 1:
            with cursor.copy(self.copy_sql) as copy:
                for row in prepared:
                    copy.write_row(row)
            return
        cursor.executemany(self.sql, prepared)

    def prepare(self, rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """The rows converted and in placeholder order."""
        conversions = self._conversions
        reorder = self._reorder
        prepared: list[tuple[Any, ...]] = []
        for row in rows:
            if conversions:
                values = list(row)
                for index, convert in conversions:
                    values[index] = convert(values[index])
                row = values
            # The driver layer takes tuples only.
            prepared.append(tuple(row) if reorder is None else tuple([row[i] for i in reorder]))
        return prepared


def _render(db: Database, statement: Any) -> tuple[str, list[str]]:
    """The statement's SQL for this backend with positional parameters, and their names."""
    if db.backend is Backend.POSTGRESQL:
        make = cast(Callable[..., Any], psycopg_dialect)  # SQLAlchemy leaves it untyped
        dialect: Any = make(paramstyle="format")  # psycopg's positional %s
    else:
        dialect = db.engine.dialect
    compiled = statement.compile(dialect=dialect)
    return str(compiled), list(compiled.positiontup or ())


def bulk_insert(db: Database, table: Table, columns: Sequence[str]) -> BulkStatement:
    """``INSERT INTO table (columns) VALUES (...)``."""
    statement = insert(table).values({name: bindparam(name) for name in columns})
    return BulkStatement(db, table, [(name, name) for name in columns], statement, copy=True)


def bulk_upsert(
    db: Database,
    table: Table,
    columns: Sequence[str],
    *,
    keys: Sequence[str],
    update: Sequence[str] = (),
    greatest: Sequence[str] = (),
) -> BulkStatement:
    """``INSERT … ON CONFLICT (keys) DO UPDATE SET col = excluded.col`` (same on both backends).

    Columns in ``greatest`` keep the larger of the stored and the new value instead (a
    last-seen time that an older sighting must not move back).
    """
    base = (sqlite.insert if db.backend is Backend.SQLITE else postgresql.insert)(table)
    values: dict[str, Any] = {name: base.excluded[name] for name in update}
    for name in greatest:
        values[name] = case(
            (base.excluded[name] > table.c[name], base.excluded[name]), else_=table.c[name]
        )
    statement = base.values({name: bindparam(name) for name in columns}).on_conflict_do_update(
        index_elements=list(keys), set_=values
    )
    return BulkStatement(db, table, [(name, name) for name in columns], statement)


def bulk_update(db: Database, table: Table, columns: Sequence[str], *, key: str) -> BulkStatement:
    """``UPDATE table SET columns… WHERE key = ?``; rows are (column values…, key value)."""
    statement = (
        sql_update(table)
        .values({name: bindparam(f"set_{name}") for name in columns})
        .where(table.c[key] == bindparam(f"where_{key}"))
    )
    params = [(f"set_{name}", name) for name in columns] + [(f"where_{key}", key)]
    return BulkStatement(db, table, params, statement)


def bulk_delete(db: Database, table: Table, *, key: str) -> BulkStatement:
    """``DELETE FROM table WHERE key = ?``; rows are (key value,)."""
    statement = sql_delete(table).where(table.c[key] == bindparam(f"where_{key}"))
    return BulkStatement(db, table, [(f"where_{key}", key)], statement)
