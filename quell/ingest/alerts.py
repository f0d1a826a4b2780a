"""Stored alerts: the document kept per alert, and reading alerts back.

An alert is stored as columns for identity and what changes after insertion (id, source,
fingerprint, times, count, status, incident), the ``data`` column for its content (title,
rule, endpoints, file, e-mail, observables, extra, ...; empty values left out, nothing a
column holds), and ``raw`` for the record's bytes. ``alert_observables`` indexes the
observables by value, for "which alerts saw this?"; the observables of given alerts (an
incident's, say) are read from their documents (:func:`document_observables`), through the
alerts' own indexes, so that table needs no second index by alert.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal_column, select, true

from quell.errors import NotFound
from quell.ingest.model import (
    Alert,
    AlertStatus,
    EmailInfo,
    Endpoint,
    FileInfo,
    Observable,
    ObservableType,
    Severity,
)
from quell.store.database import Backend, Database
from quell.store.schema import alerts

# Fields with a column of their own are not repeated in ``data``.
_COLUMN_FIELDS = frozenset(
    {
        "id", "source", "format", "fingerprint", "count", "first_seen", "last_seen",
        "received_at", "status", "incident_id", "raw",
    }
)  # fmt: skip
_DOCUMENT_FIELDS = tuple(f.name for f in fields(Alert) if f.name not in _COLUMN_FIELDS)


def alert_document(alert: Alert) -> dict[str, Any]:
    """What the ``data`` column stores for ``alert`` (nested dataclasses are left to orjson)."""
    document = {}
    for name in _DOCUMENT_FIELDS:
        value = getattr(alert, name)
        if value is None or (not value and isinstance(value, list | dict)):
            continue  # absent or empty: left out
        document[name] = value
    return document


def render_alert(alert: Alert, *, with_raw: bool = False) -> dict[str, Any]:
    """The whole alert as plain data for the API and the CLI (raw as text when asked)."""
    rendered = {name: getattr(alert, f.name) for f in fields(Alert) if (name := f.name) != "raw"}
    if with_raw:
        try:
            rendered["raw"] = alert.raw.decode("utf-8")
        except UnicodeDecodeError:
            rendered["raw"] = None
    return rendered


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _endpoint(value: Any) -> Endpoint | None:
    return Endpoint(**value) if isinstance(value, dict) else None


def _file(value: Any) -> FileInfo | None:
    return FileInfo(**value) if isinstance(value, dict) else None


def _email(value: Any) -> EmailInfo | None:
    if not isinstance(value, dict):
        return None
    data = dict(value)
    data["date"] = _time(data.get("date"))
    data["attachments"] = [FileInfo(**item) for item in data.get("attachments") or []]
    return EmailInfo(**data)


def alert_from_document(data: dict[str, Any]) -> Alert:
    """An Alert with the content fields of a stored document (identity fields unset)."""
    values = {name: value for name, value in data.items() if name in _DOCUMENT_FIELDS}
    values["time"] = _time(values["time"])
    values["severity"] = Severity(values.get("severity", 0))
    values["src"] = _endpoint(values.get("src"))
    values["dst"] = _endpoint(values.get("dst"))
    values["host"] = _endpoint(values.get("host"))
    values["file"] = _file(values.get("file"))
    values["email"] = _email(values.get("email"))
    values["observables"] = [
        Observable(
            type=ObservableType(item["type"]),
            value=item["value"],
            role=item.get("role"),
            private=item.get("private"),
        )
        for item in values.get("observables") or []
    ]
    return Alert(**values)


def document_observables(backend: Backend, chosen: Select[Any]) -> Select[Any]:
    """``(alert_id, type, value)`` for each observable in the documents of the alerts that
    ``chosen`` selects (its columns: ``alerts.c.id`` and ``alerts.c.data``).

    The database takes the list apart itself (SQLite ``json_each``, PostgreSQL
    ``jsonb_array_elements``): the alerts are found by their own indexes (by incident, by id),
    and nothing is scanned by observable or parsed in Python. A document lists each (type,
    value) of its alert once, so one value comes twice only under two types; values come whole
    (``alert_observables`` keeps their first 512 characters)."""
    docs = chosen.subquery("docs")
    kind: ColumnElement[Any]
    value: ColumnElement[Any]
    if backend is Backend.POSTGRESQL:
        items = func.jsonb_array_elements(docs.c.data["observables"])
        item = items.table_valued("value", joins_implicitly=True).alias("item")
        kind = item.c.value.op("->>")("type")
        value = item.c.value.op("->>")("value")
    else:
        items = func.json_each(docs.c.data, "$.observables")
        item = items.table_valued("value", joins_implicitly=True).alias("item")
        kind = func.json_extract(item.c.value, "$.type")
        value = func.json_extract(item.c.value, "$.value")
    return select(
        docs.c.id.label("alert_id"), kind.label("type"), value.label("value")
    ).select_from(docs.join(item, true()))


def _from_row(row: Any) -> Alert:
    alert = alert_from_document(dict(row.data))
    alert.id = row.id
    alert.source = row.source
    alert.format = row.format
    alert.fingerprint = row.fingerprint
    alert.count = row._mapping["count"]  # Row.count is tuple.count
    alert.first_seen = row.first_seen
    alert.last_seen = row.last_seen
    alert.received_at = row.received_at
    alert.status = AlertStatus(row.status)
    alert.incident_id = row.incident_id
    alert.raw = bytes(row.raw)
    return alert


class AlertService:
    """Read stored alerts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, alert_id: str) -> Alert:
        """One alert, raw bytes included."""
        with self.db.read() as conn:
            row = conn.execute(select(*alerts.c).where(alerts.c.id == alert_id)).first()
        if row is None:
            raise NotFound(f"no alert {alert_id!r}", field="id")
        return _from_row(row)

    def get_many(self, alert_ids: list[str]) -> dict[str, Alert]:
        """Alerts by id (missing ones are left out)."""
        found: dict[str, Alert] = {}
        with self.db.read() as conn:
            for start in range(0, len(alert_ids), 500):
                rows = conn.execute(
                    select(*alerts.c).where(alerts.c.id.in_(alert_ids[start : start + 500]))
                )
                found.update({row.id: _from_row(row) for row in rows})
        return found

    def list_all(
        self,
        *,
        source: str | None = None,
        incident_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Alert]:
        """Alerts, newest received first (ids are time-ordered at receipt)."""
        query = select(*alerts.c).order_by(alerts.c.id.desc())
        if source is not None and incident_id is not None:
            # The incident's few alerts, then their source tested: compared as an expression,
            # the source cannot draw SQLite to its own index, which walks a busy source's
            # alerts newest first to find the incident's.
            query = query.where(alerts.c.source.concat(literal_column("''")) == source)
        elif source is not None:
            query = query.where(alerts.c.source == source)
        if incident_id is not None:
            query = query.where(alerts.c.incident_id == incident_id)
        with self.db.read() as conn:
            rows = conn.execute(query.limit(min(max(limit, 1), 1000)).offset(max(offset, 0)))
            return [_from_row(row) for row in rows]

    def count(self) -> int:
        """How many alerts are stored."""
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(alerts)).scalar_one())
