"""Full-text search over incidents, on the database's own engine.

Each incident has one document (``incident_documents``): its title, description, status and
resolution, owner and assignee, tags and techniques, notes, task titles, correlation values, and
the titles, rules and observables of its alerts. Documents are rebuilt for the incidents that
changed since they were indexed (their ``updated_at`` moved past ``indexed_at``), in bounded
batches, before each search and on the engine's tick; ingest never waits for it. Finding them
compares every incident with its document on a service's first refresh and every
:data:`FULL_EVERY` refreshes; in between, only the incidents changed since a minute
(:data:`MARGIN`) before the newest change the last refresh saw, by the ``updated_at`` index. A
change stamped earlier than that (a writer whose clock lags the others' by more than the margin)
is found by the next full comparison.

- **SQLite:** an FTS5 table ``incident_fts`` (``unicode61``, diacritics folded), ranked by bm25.
- **PostgreSQL:** a stored ``body_tsv`` column (``to_tsvector('simple', body)``, generated) with
  a GIN index, ranked by ``ts_rank`` over it: ranking never tokenizes a document again.

A query is words: each must appear (``203.0.113.9``, ``phishing``, ``alice``); quotes, operators
and other syntax of either engine are not passed through, so no query is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select, text

from quell.cases.incidents import Incident, IncidentService, statuses_of
from quell.errors import InvalidInput
from quell.ingest.alerts import document_observables
from quell.store.database import Backend, Database
from quell.store.dialect import upsert
from quell.store.schema import (
    alerts,
    incident_documents,
    incident_keys,
    incident_notes,
    incident_tasks,
    incidents,
)

# The engines' own objects, made by migrations 0011 and 0022 (the schema comparison leaves
# them out).
ENGINE_OBJECTS = frozenset({"incident_fts", "ix_incident_documents_fts", "body_tsv"})
BATCH = 500  # incidents re-indexed per round
FULL_EVERY = 20  # refreshes between full comparisons (the engine refreshes every 30 s)
MARGIN = timedelta(minutes=1)  # how far before the newest change seen a refresh looks
MAX_ALERTS = 200  # alerts of an incident that go into its document
MAX_BODY_CHARS = 200_000
_WORD = re.compile(r"[\w@.:/+-]+", re.UNICODE)


def words(query: str) -> list[str]:
    """The words of a query (at most 20, each at most 100 characters)."""
    found = [w.strip(".:/-") for w in _WORD.findall(query)]
    return [w[:100] for w in found if w][:20]


# The searches, on each backend, of every incident or of those in some statuses.
_PG_SEARCH = text(
    "SELECT d.incident_id, ts_rank(d.body_tsv, q) AS rank "
    "FROM incident_documents d, plainto_tsquery('simple', :q) q "
    "WHERE d.body_tsv @@ q "
    "ORDER BY rank DESC, d.incident_id LIMIT :limit OFFSET :offset"
)
_PG_SEARCH_STATUS = text(
    "SELECT d.incident_id, ts_rank(d.body_tsv, q) AS rank "
    "FROM incident_documents d JOIN incidents i ON i.id = d.incident_id "
    "CROSS JOIN plainto_tsquery('simple', :q) q "
    "WHERE d.body_tsv @@ q AND i.status IN :statuses "
    "ORDER BY rank DESC, d.incident_id LIMIT :limit OFFSET :offset"
).bindparams(bindparam("statuses", expanding=True))
_FTS_SEARCH = text(
    "SELECT incident_id, bm25(incident_fts) AS rank FROM incident_fts "
    "WHERE incident_fts MATCH :q ORDER BY rank, incident_id LIMIT :limit OFFSET :offset"
)
_FTS_SEARCH_STATUS = text(
    "SELECT incident_fts.incident_id, bm25(incident_fts) AS rank FROM incident_fts "
    "JOIN incidents ON incidents.id = incident_fts.incident_id "
    "WHERE incident_fts MATCH :q AND incidents.status IN :statuses "
    "ORDER BY rank, incident_fts.incident_id LIMIT :limit OFFSET :offset"
).bindparams(bindparam("statuses", expanding=True))


class IncidentSearch:
    """Index incidents' text and search it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._since: datetime | None = None  # incidents changed since then; None: all
        self._partial = 0  # refreshes since the last full comparison

    def refresh(self, *, rounds: int = 20) -> int:
        """Re-index the incidents changed since they were last indexed (at most ``rounds``
        batches); returns how many were.

        Each batch's documents are built in a read transaction and stored in a short write
        transaction of their own: on SQLite, whose one writer is ingest's too, the write lock
        is held for the upserts only. An incident that changes in between keeps a stamp that
        differs from its ``updated_at``, and is indexed again next time."""
        full = self._since is None or self._partial >= FULL_EVERY
        since = None if full else self._since
        done, newest, caught_up = 0, None, False
        for _ in range(rounds):
            with self.db.read() as conn:
                if newest is None:
                    newest = conn.execute(select(func.max(incidents.c.updated_at))).scalar()
                stale: list[str] = list(conn.execute(_stale(since).limit(BATCH)).scalars())
                if not stale:
                    caught_up = True
                    break
                documents = _documents(conn, self.db.backend, stale)
            with self.db.write() as conn:
                self._store(conn, documents)
            done += len(stale)
            if len(stale) < BATCH:
                caught_up = True
                break
        if caught_up and newest is not None:  # the next refresh may read only what changes
            self._since = newest - MARGIN
            self._partial = 0 if full else self._partial + 1
        return done

    def search(
        self, query: str, *, limit: int = 50, offset: int = 0, status: str | None = None
    ) -> list[tuple[Incident, float]]:
        """Incidents whose text has every word of ``query``, best first, with their rank;
        ``offset`` skips that many of them (the next page); ``status`` as for a listing
        (``open``, or one status)."""
        terms = words(query)
        if not terms:
            raise InvalidInput("a search needs at least one word", field="q")
        wanted = None if status is None else [s.value for s in statuses_of(status)]
        self.refresh()
        limit = max(1, min(limit, 500))
        offset = max(0, offset)
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if wanted is not None:
            params["statuses"] = wanted
        with self.db.read() as conn:
            if self.db.backend is Backend.POSTGRESQL:
                params["q"] = " ".join(terms)
                statement = _PG_SEARCH if wanted is None else _PG_SEARCH_STATUS
                rows = conn.execute(statement, params).all()
                ranked = [(row[0], float(row[1])) for row in rows]
            else:
                params["q"] = " AND ".join('"' + term.replace('"', '""') + '"' for term in terms)
                statement = _FTS_SEARCH if wanted is None else _FTS_SEARCH_STATUS
                rows = conn.execute(statement, params).all()
                ranked = [(row[0], -float(row[1])) for row in rows]  # bm25: lower is better
        found = IncidentService(self.db).get_many([incident_id for incident_id, _ in ranked])
        return [(found[i], rank) for i, rank in ranked if i in found]

    def _store(self, conn: Connection, documents: dict[str, tuple[str, datetime]]) -> None:
        # ``indexed_at`` is the incident's own ``updated_at`` as the read transaction saw it: a
        # change committed since (or later, with an earlier time: a writer that took its time
        # before its lock) differs, and is indexed next time.
        if not documents:
            return
        conn.execute(
            upsert(self.db.backend, incident_documents, keys=["incident_id"],
                   update=["body", "indexed_at"]),
            [
                {"incident_id": i, "body": body, "indexed_at": stamp}
                for i, (body, stamp) in documents.items()
            ],
        )  # fmt: skip
        if self.db.backend is Backend.SQLITE:
            # The FTS row shares its document's rowid: found by it, not by a scan.
            rowid = "(SELECT rowid FROM incident_documents WHERE incident_id = :id)"
            conn.execute(
                text(f"DELETE FROM incident_fts WHERE rowid = {rowid}"),  # noqa: S608
                [{"id": i} for i in documents],
            )
            conn.execute(
                text(
                    "INSERT INTO incident_fts (rowid, incident_id, body) "  # noqa: S608
                    f"VALUES ({rowid}, :id, :body)"
                ),
                [{"id": i, "body": body} for i, (body, _stamp) in documents.items()],
            )


def _stale(since: datetime | None) -> Select[Any]:
    """Incidents whose document is missing or older than they are (changed since ``since``).
    With ``since``, SQLite reads the changed ones by the ``updated_at`` index and their
    documents by key; without it, every incident."""
    changed = [] if since is None else [incidents.c.updated_at >= since]
    return (
        select(incidents.c.id)
        .select_from(
            incidents.outerjoin(
                incident_documents, incident_documents.c.incident_id == incidents.c.id
            )
        )
        .where(
            *changed,
            incident_documents.c.indexed_at.is_(None)
            | (incident_documents.c.indexed_at != incidents.c.updated_at),
        )
    )


def _documents(
    conn: Connection, backend: Backend, ids: list[str]
) -> dict[str, tuple[str, datetime]]:
    """The documents of the incidents ``ids`` (those that still exist), with the
    ``updated_at`` each was built from. Incidents, notes, tasks and keys are read for the whole
    batch at once; alerts per incident (the first :data:`MAX_ALERTS`), by its index."""
    parts: dict[str, list[str]] = {}
    stamps: dict[str, datetime] = {}
    for row in conn.execute(
        select(incidents).where(incidents.c.id.in_(ids)).order_by(incidents.c.id)
    ):
        parts[row.id] = [
            row.id, row.title, row.description or "", row.status, row.resolution or "",
            row.owner or "", row.assignee or "", *(row.tags or []), *(row.techniques or []),
        ]  # fmt: skip
        stamps[row.id] = row.updated_at
    found = list(parts)
    for table, column in (
        (incident_notes, incident_notes.c.body),
        (incident_tasks, incident_tasks.c.title),
        (incident_keys, incident_keys.c.value),
    ):
        rows = conn.execute(
            select(table.c.incident_id, column)
            .where(table.c.incident_id.in_(found))
            .order_by(*table.primary_key.columns)
        )
        for incident_id, value in rows:
            parts[incident_id].append(value)
    for incident_id in found:
        alert_rows = conn.execute(
            select(alerts.c.id, alerts.c.title, alerts.c.rule_name)
            .where(alerts.c.incident_id == incident_id)
            .order_by(alerts.c.id)
            .limit(MAX_ALERTS)
        ).all()
        parts[incident_id] += _flatten((a.id, a.title, a.rule_name or "") for a in alert_rows)
        if alert_rows:
            chosen = select(alerts.c.id, alerts.c.data).where(
                alerts.c.id.in_([a.id for a in alert_rows])
            )
            observed = document_observables(backend, chosen).subquery()
            parts[incident_id] += conn.execute(
                select(observed.c.value).distinct().limit(2000)
            ).scalars()
    return {
        incident_id: (
            "\n".join(p for p in parts[incident_id] if p)[:MAX_BODY_CHARS],
            stamps[incident_id],
        )
        for incident_id in found
    }


def _flatten(rows: Iterable[tuple[str, ...]]) -> list[str]:
    return [value for row in rows for value in row]


__all__ = ["ENGINE_OBJECTS", "IncidentSearch", "words"]
