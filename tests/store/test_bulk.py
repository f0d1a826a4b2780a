"""Bulk statements on both backends: rows read back through the ordinary column types."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

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
