"""Reading and claiming runs, and keeping the playbook versions runs pin."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    String,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    union_all,
    update,
)

from quell.clock import Clock
from quell.engine.notify import notify_ready
from quell.engine.states import RunStatus
from quell.errors import NotFound
from quell.ids import new_id
from quell.playbooks.ir import Playbook, content_digest
from quell.store.database import Backend, Database
from quell.store.schema import playbook_versions, run_steps, runs, schedules
from quell.store.types import UTCDateTime


@dataclass(frozen=True)
class PlaybookVersion:
    """A stored playbook version."""

    id: str
    playbook_id: str
    version: int
    name: str
    digest: str
    active: bool
    created_at: datetime
    created_by: str | None
    source_format: str
    state: str = "published"
    published_at: datetime | None = None
    published_by: str | None = None

    @property
    def published(self) -> bool:
        """Whether it went through publication (so it may be active and run for real)."""
        return self.state == "published"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API and the CLI."""
        return {
            "id": self.id,
            "playbook_id": self.playbook_id,
            "version": self.version,
            "name": self.name,
            "digest": self.digest,
            "active": self.active,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "format": self.source_format,
            "state": self.state,
            "published_at": self.published_at,
            "published_by": self.published_by,
        }


def _version(row: Any) -> PlaybookVersion:
    return PlaybookVersion(
        row.id,
        row.playbook_id,
        row.version,
        row.name,
        row.digest,
        row.active,
        row.created_at,
        row.created_by,
        row.source_format,
        row.state or "published",
        row.published_at,
        row.published_by,
    )


class PlaybookStore:
    """Stored playbook versions: what runs pin, and which ones are active (triggers live)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._irs: dict[str, Playbook] = {}

    def register(
        self,
        playbook: Playbook,
        *,
        source: str | None = None,
        created_by: str | None = None,
        activate: bool = False,
        published_by: str | None = None,
        published: bool = False,
    ) -> PlaybookVersion:
        """Store ``playbook`` (once per content) as a draft and, with ``activate``, publish it
        (as ``published_by``, else its author) and make its triggers live. The review workflow
        on top of this is :class:`quell.engine.library.PlaybookLibrary`'s."""
        version, _created = self.add_version(
            playbook,
            source=source,
            created_by=created_by,
            activate=activate,
            published_by=published_by,
            published=published,
        )
        return version

    def add_version(
        self,
        playbook: Playbook,
        *,
        source: str | None = None,
        created_by: str | None = None,
        activate: bool = False,
        published_by: str | None = None,
        published: bool = False,
    ) -> tuple[PlaybookVersion, bool]:
        """:meth:`register`, and whether this content was new (False: the version stored
        before is returned, unchanged but for ``activate``)."""
        ir = playbook.to_json()
        digest = content_digest(ir)
        now = self.clock.now()
        with self.db.write() as conn:
            row = conn.execute(
                select(playbook_versions).where(playbook_versions.c.digest == digest)
            ).first()
            if row is None:
                version_id = new_id("pbv")
                conn.execute(
                    playbook_versions.insert().values(
                        id=version_id,
                        playbook_id=playbook.id,
                        version=playbook.version,
                        name=playbook.name,
                        digest=digest,
                        ir=ir.decode(),
                        source=source,
                        source_format=playbook.source_format,
                        active=False,
                        created_at=now,
                        created_by=created_by,
                        state="published" if published else "draft",
                        published_by=(published_by or created_by or "system")
                        if published
                        else None,
                        published_at=now if published else None,
                    )
                )
            else:
                version_id = row.id
            created = row is None
            if activate:
                publisher = published_by or created_by or (row.created_by if row else None)
                self.mark_published(conn, version_id, publisher or "system", now)
                self._activate(conn, playbook, version_id, now)
            row = conn.execute(
                select(playbook_versions).where(playbook_versions.c.id == version_id)
            ).one()
        self._irs[version_id] = playbook
        return _version(row), created

    @staticmethod
    def mark_published(conn: Connection, version_id: str, by: str, now: datetime) -> None:
        """A version's publication (once: a version published before keeps its record)."""
        conn.execute(
            update(playbook_versions)
            .where(
                playbook_versions.c.id == version_id,
                or_(playbook_versions.c.state.is_(None), playbook_versions.c.state != "published"),
            )
            .values(state="published", published_by=by, published_at=now)
        )

    def activate_version(self, conn: Connection, version_id: str, now: datetime) -> None:
        """Make a stored version the active one (in the caller's transaction)."""
        self._activate(conn, self.ir(version_id), version_id, now)

    def _activate(
        self, conn: Connection, playbook: Playbook, version_id: str, now: datetime
    ) -> None:
        from quell.engine.triggers import next_fire  # triggers imports this module

        conn.execute(
            update(playbook_versions)
            .where(playbook_versions.c.playbook_id == playbook.id, playbook_versions.c.active)
            .values(active=False)
        )
        conn.execute(
            update(playbook_versions)
            .where(playbook_versions.c.id == version_id)
            .values(active=True)
        )
        conn.execute(schedules.delete().where(schedules.c.playbook_id == playbook.id))
        for index, trigger in enumerate(playbook.triggers):
            if trigger.on == "schedule" and trigger.cron:
                conn.execute(
                    schedules.insert().values(
                        playbook_id=playbook.id,
                        trigger=index,
                        cron=trigger.cron,
                        next_at=next_fire(trigger.cron, now),
                        last_at=None,
                    )
                )

    def deactivate(self, playbook_id: str) -> None:
        """Stop a playbook's triggers (its runs go on)."""
        with self.db.write() as conn:
            done = conn.execute(
                update(playbook_versions)
                .where(playbook_versions.c.playbook_id == playbook_id, playbook_versions.c.active)
                .values(active=False)
            )
            if not done.rowcount:
                raise NotFound(f"no active playbook {playbook_id!r}", field="playbook")
            conn.execute(schedules.delete().where(schedules.c.playbook_id == playbook_id))

    def ir(self, version_id: str) -> Playbook:
        """The IR a version pinned (cached: versions never change)."""
        found = self._irs.get(version_id)
        if found is None:
            with self.db.read() as conn:
                text = conn.execute(
                    select(playbook_versions.c.ir).where(playbook_versions.c.id == version_id)
                ).scalar()
            if text is None:
                raise NotFound(f"no playbook version {version_id!r}", field="playbook_version")
            found = self._irs[version_id] = Playbook.from_json(text)
        return found

    def resolve(
        self,
        playbook_id: str,
        version: int | None = None,
        *,
        published_only: bool = False,
        cacao_version: str | None = None,
    ) -> PlaybookVersion:
        """The version to run: the active one (or given version), else the newest stored (the
        newest published, with ``published_only``: what a run calls as a sub-playbook).
        ``cacao_version`` picks the version imported from CACAO with that ``modified`` (how a
        CACAO ``playbook-action`` names a version)."""
        query = select(playbook_versions).where(playbook_versions.c.playbook_id == playbook_id)
        if published_only:
            query = query.where(
                or_(playbook_versions.c.state.is_(None), playbook_versions.c.state == "published")
            )
        if version is not None:
            query = query.where(playbook_versions.c.version == version)
        query = query.order_by(
            playbook_versions.c.active.desc(), playbook_versions.c.created_at.desc()
        )
        with self.db.read() as conn:
            if cacao_version is None:
                row = conn.execute(query.limit(1)).first()
            else:
                row = next(
                    (r for r in conn.execute(query) if _cacao_modified(r.ir) == cacao_version),
                    None,
                )
        if row is None:
            wanted = f" version {version}" if version is not None else ""
            if cacao_version is not None:
                wanted = f" of CACAO version (modified) {cacao_version}"
            kind = "published playbook" if published_only else "playbook"
            raise NotFound(f"no {kind} {playbook_id!r}{wanted}", field="playbook")
        return _version(row)

    def exists(self, playbook_id: str, version: int | None) -> bool:
        """PlaybookCatalog: whether a sub-playbook reference can be resolved."""
        try:
            self.resolve(playbook_id, version)
        except NotFound:
            return False
        return True

    def list_all(self, *, active_only: bool = False) -> list[PlaybookVersion]:
        """Stored versions, newest first."""
        query = select(playbook_versions).order_by(
            playbook_versions.c.playbook_id, playbook_versions.c.created_at.desc()
        )
        if active_only:
            query = query.where(playbook_versions.c.active)
        with self.db.read() as conn:
            return [_version(row) for row in conn.execute(query)]

    def active(self) -> list[tuple[PlaybookVersion, Playbook]]:
        """The active versions with their IR (for the trigger dispatcher)."""
        found = self.list_all(active_only=True)
        return [(version, self.ir(version.id)) for version in found]


def run_status_is(status: RunStatus) -> ColumnElement[bool]:
    """``runs.status = '<status>'`` with the status written into the SQL. The partial indexes
    on ``runs`` each hold the runs of one status, and a database can search one only when the
    query names that status itself: compared with a bound parameter (which could be any
    status), SQLite reads the whole table, finished runs and all."""
    return runs.c.status == literal_column(f"'{status.value}'")


@dataclass(frozen=True)
class Claimed:
    """A run this worker now holds, with its row as the claim left it."""

    id: str
    epoch: int
    row: Any = None

    @property
    def fresh(self) -> bool:
        """Never held before (first claim of a run created ready): its journal is empty."""
        return self.epoch == 1 and self.row is not None


class RunStore:
    """The queries the worker runs against ``runs``."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._claims: dict[bool, Any] = {}

    def claim(
        self, owner: str, limit: int, lease: timedelta, *, roots: Sequence[str] | None = None
    ) -> list[Claimed]:
        """Take up to ``limit`` runs that are ready, or whose lease expired."""
        if limit <= 0:
            return []
        with self.db.write() as conn:
            # Read the time once the write lock is held: a claim that waited for the lock
            # still gives a whole lease.
            return self._claim(conn, owner, limit, lease, roots)

    def _claim(
        self,
        conn: Connection,
        owner: str,
        limit: int,
        lease: timedelta,
        roots: Sequence[str] | None,
    ) -> list[Claimed]:
        now = self.clock.now()
        params: dict[str, Any] = {
            "now": now,
            "expires": now + lease,
            "owner": owner,
            "limit": limit,
        }
        if roots is not None:
            params["roots"] = list(roots)
        statement = self._claim_statement(roots is not None)
        return [Claimed(row.id, row.lease_epoch, row) for row in conn.execute(statement, params)]

    def _claim_statement(self, by_root: bool) -> Any:
        """The claim, built once per store: a worker claims many times a second, and building
        the statement cost more than the database spends running it."""
        cached = self._claims.get(by_root)
        if cached is not None:
            return cached
        now = bindparam("now", type_=UTCDateTime())
        limit = bindparam("limit", type_=Integer())
        ready = run_status_is(RunStatus.READY)
        expired = and_(run_status_is(RunStatus.RUNNING), runs.c.lease_expires < now)
        roots = [runs.c.root_run_id.in_(bindparam("roots", expanding=True))] if by_root else []
        if self.db.backend is Backend.POSTGRESQL:
            candidates: Any = (
                select(runs.c.id)
                .where(or_(ready, expired), *roots)
                .order_by(runs.c.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        else:
            # SQLite reads a partial index for neither side of an OR: each side is a query of
            # its own (on its index, whatever the number of finished runs), then the oldest.
            # The ready runs' index is in age order. The lapsed leases are found by lease and
            # then sorted: "+" keeps SQLite from walking every run by age (ix_runs_created_at)
            # to find the few running ones.
            sides = [
                select(runs.c.id, runs.c.created_at)
                .where(condition, *roots)
                .order_by(order)
                .limit(limit)
                .subquery()
                for condition, order in (
                    (ready, runs.c.created_at),
                    (expired, literal_column("+runs.created_at")),
                )
            ]
            both = union_all(*(select(side) for side in sides)).subquery()
            candidates = select(both.c.id).order_by(both.c.created_at).limit(limit)
        statement = (
            update(runs)
            .where(runs.c.id.in_(candidates.scalar_subquery()))
            .values(
                status=RunStatus.RUNNING.value,
                owner=bindparam("owner", type_=String()),
                lease_epoch=runs.c.lease_epoch + 1,
                lease_expires=bindparam("expires", type_=UTCDateTime()),
                started_at=func.coalesce(runs.c.started_at, now),
                updated_at=now,
                wake_at=None,
            )
            .returning(*runs.c)
        )
        self._claims[by_root] = statement
        return statement

    def renew(self, owner: str, lease: timedelta, run_ids: Sequence[str]) -> dict[str, str | None]:
        """Extend the leases of the runs this worker is executing (only those: a run it holds
        but dropped, after a failure, must expire and move on); the ones it still holds, with
        any control asked."""
        now = self.clock.now()
        held: dict[str, str | None] = {}
        with self.db.write() as conn:
            for start in range(0, len(run_ids), 500):
                chunk = list(run_ids[start : start + 500])
                mine = and_(
                    runs.c.id.in_(chunk),
                    runs.c.owner == owner,
                    runs.c.status == RunStatus.RUNNING.value,
                )
                conn.execute(update(runs).where(mine).values(lease_expires=now + lease))
                rows = conn.execute(select(runs.c.id, runs.c.control).where(mine))
                held.update({row.id: row.control for row in rows})
        return held

    def wake_due(self) -> int:
        """Waiting runs whose timer or deadline has come: make them ready."""
        now = self.clock.now()
        with self.db.write() as conn:
            done = conn.execute(
                update(runs)
                .where(run_status_is(RunStatus.WAITING), runs.c.wake_at <= now)
                .values(status=RunStatus.READY.value, wake_at=None, updated_at=now)
            )
            woken = int(done.rowcount or 0)
            if woken:
                notify_ready(conn)
            return woken

    def load(self, run_id: str) -> tuple[Any, list[Any]]:
        """A run's row and its journal (oldest first)."""
        with self.db.read() as conn:
            run = conn.execute(select(runs).where(runs.c.id == run_id)).first()
            if run is None:
                raise NotFound(f"no run {run_id!r}", field="run")
            steps = list(
                conn.execute(
                    select(run_steps).where(run_steps.c.run_id == run_id).order_by(run_steps.c.seq)
                )
            )
        return run, steps

    def statuses(self, run_ids: Iterable[str]) -> dict[str, str]:
        """The status of each run."""
        ids = list(run_ids)
        found: dict[str, str] = {}
        with self.db.read() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    select(runs.c.id, runs.c.status).where(runs.c.id.in_(ids[start : start + 500]))
                )
                found.update({row.id: row.status for row in rows})
        return found


def resume_decided(conn: Connection, run_id: str, now: datetime) -> None:
    """A wait of the run was decided (or its child run ended): make the run go on.

    A waiting run becomes ready. A run still held by the worker that opened the wait (it has
    not released itself yet) is marked instead (``wake_at``), and its release to waiting turns
    ready (see ``journal._release_waiting``). One statement, so that on PostgreSQL a release
    committing meanwhile is seen: the row is re-read after its lock and both CASEs follow it.
    """
    waiting = runs.c.status == RunStatus.WAITING.value
    conn.execute(
        update(runs)
        .where(
            runs.c.id == run_id,
            runs.c.status.in_([RunStatus.WAITING.value, RunStatus.RUNNING.value]),
        )
        .values(
            status=case((waiting, RunStatus.READY.value), else_=runs.c.status),
            wake_at=case((waiting, None), else_=now),
            updated_at=now,
        )
    )
    notify_ready(conn)


def _cacao_modified(ir: str) -> str | None:
    """The CACAO ``modified`` a stored IR was imported with (None: not from CACAO)."""
    extensions = orjson.loads(ir).get("extensions") or {}
    cacao = extensions.get("cacao") if isinstance(extensions, dict) else None
    modified = cacao.get("modified") if isinstance(cacao, dict) else None
    return modified if isinstance(modified, str) else None


__all__ = ["Claimed", "PlaybookStore", "PlaybookVersion", "RunStore", "resume_decided"]
