"""Bulk statements on both backends: rows read back through the ordinary column types."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import JSON, Column, Integer, LargeBinary, MetaData, String, Table, select

from quell.store.bulk import bulk_insert, bulk_update, bulk_upsert
from quell.store.database import Database
from quell.store.types import UTCDateTime

scratch = MetaData()
rows = Table(
    "scratch_bulk",
    scratch,
    Column("id", Integer, primary_key=True),
    Column("name", String(32), nullable=False),
    Column("at", UTCDateTime(), nullable=True),
    Column("doc", JSON(), nullable=True),
    Column("blob", LargeBinary(), nullable=True),
)


@pytest.fixture
def db(database: Database) -> Iterator[Database]:
    scratch.create_all(database.engine)
    yield database
    scratch.drop_all(database.engine)


def _all(db: Database) -> list[tuple[object, ...]]:
    with db.read() as conn:
        return [tuple(r) for r in conn.execute(select(rows).order_by(rows.c.id))]


def test_inserted_rows_read_back_like_orm_rows(db: Database) -> None:
    berlin = timezone(timedelta(hours=1))
    moment = datetime(2026, 3, 1, 13, 0, 5, 123, tzinfo=berlin)
    with db.write() as conn:
        bulk_insert(db, rows, ("id", "name", "at", "doc", "blob")).run(
            conn,
            [
                (1, "one", moment, {"k": [1, "ü"]}, b"\x00\xff"),
                (2, "two", None, None, None),
            ],
        )
    assert _all(db) == [
        (1, "one", datetime(2026, 3, 1, 12, 0, 5, 123, tzinfo=UTC), {"k": [1, "ü"]}, b"\x00\xff"),
        (2, "two", None, None, None),
    ]


def test_update_and_upsert_take_values_in_the_callers_order(db: Database) -> None:
    with db.write() as conn:
        bulk_insert(db, rows, ("id", "name")).run(conn, [(1, "a"), (2, "b")])
        # Column order given differs from the table's: the statement must not mix them up.
        bulk_update(db, rows, ("doc", "name"), key="id").run(conn, [({"n": 1}, "A", 1)])
        bulk_upsert(db, rows, ("name", "id"), keys=("id",), update=("name",)).run(
            conn, [("B", 2), ("C", 3)]
        )
    assert [(r[0], r[1], r[3]) for r in _all(db)] == [
        (1, "A", {"n": 1}),
        (2, "B", None),
        (3, "C", None),
    ]


def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="naive"), db.write() as conn:
        bulk_insert(db, rows, ("id", "name", "at")).run(conn, [(1, "x", datetime(2026, 1, 1))])


AWKWARD = [
    "tab\there",
    "line\nbreak\r\nand return",
    "back\\slash \\N \\. and \\t",
    "quotes ' \" and ,;|",
    "ünïcødé ✓ \U0001d518",
    "",
]


class _Recording:
    """A DBAPI cursor that notes whether a COPY went through it."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.copies: list[str] = []

    def copy(self, sql: str) -> Any:
        self.copies.append(sql)
        return self.cursor.copy(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cursor, name)


def test_the_writers_cursor_path_keeps_every_value_as_given(db: Database) -> None:
    """``run_cursor`` (the journal's path: COPY on PostgreSQL for a plain INSERT of several
    rows, one execution per row otherwise) stores text that COPY's format would otherwise
    read as separators, escapes or NULL exactly as given, and JSON, times, bytes and NULLs
    too, whatever order the caller gives the columns in."""
    columns = ("blob", "at", "id", "doc", "name")  # not the table's order
    statement = bulk_insert(db, rows, columns)
    postgres = db.backend.value == "postgresql"
    assert (statement.copy_sql is not None) == postgres
    moment = datetime(2026, 3, 1, 13, 0, 5, 123, tzinfo=timezone(timedelta(hours=1)))
    given = [
        (text.encode(), moment, index, {"text": text, "list": [text, None, 1.5]}, text[:32])
        for index, text in enumerate(AWKWARD, start=1)
    ]
    given.append((None, None, len(given) + 1, None, "nulls"))
    with db.write() as conn:
        cursor = _Recording(conn.connection.cursor())
        try:
            statement.run_cursor(cursor, given)
            bulk_insert(db, rows, ("id", "name")).run_cursor(cursor, [(100, "alone")])
        finally:
            cursor.close()
    assert len(cursor.copies) == (1 if postgres else 0)  # the single row went as an INSERT
    expected = [
        (index, name, None if at is None else at.astimezone(UTC), doc, blob)
        for blob, at, index, doc, name in given
    ]
    assert _all(db) == [*expected, (100, "alone", None, None, None)]


def test_a_bad_row_in_the_cursor_path_fails_the_whole_batch(db: Database) -> None:
    """One row the database refuses (a duplicate key here) fails the statement and the
    transaction, so nothing of the batch is stored: the journal then retries each write
    alone."""
    statement = bulk_insert(db, rows, ("id", "name"))
    with db.write() as conn:
        statement.run(conn, [(1, "first")])

    def write_batch() -> None:
        with db.write() as conn:
            cursor = conn.connection.cursor()
            try:
                statement.run_cursor(cursor, [(2, "second"), (1, "duplicate"), (3, "third")])
            finally:
                cursor.close()

    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)) as caught:
        write_batch()
    assert "scratch_bulk" in str(caught.value)
    assert [(r[0], r[1]) for r in _all(db)] == [(1, "first")]
