"""Playbooks as people manage them: compile text against what is installed, store a version,
show one with its source and IR, publish one through review, make one active (its triggers
live) or stop its triggers.

Publishing: a new version is a *draft*; its author (or another writer) *submits* it for review;
someone else with ``playbooks:publish`` *publishes* it (it becomes the active version) or
*rejects* it back to draft, each with a comment. The author of a version never publishes it.
*Rolling back* makes an earlier published version active again. Every step is recorded
(``reviews``) and audited; a version's content never changes whatever its state, and runs pin
the version they started with. With ``playbook_review = "optional"`` (a one-person lab) an
author may publish their own version directly; the record says so.

The checks are the compiler's: an unknown action, inputs that do not match an action's schema,
a secret no configuration provides, a sub-playbook that is not stored, and everything the
language itself refuses, each reported with file, line and column (:class:`PlaybookInvalid`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import insert, select, update

from quell.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from quell.ids import new_id
from quell.playbooks.ir import content_digest
from quell.store.schema import playbook_reviews, playbook_versions

if TYPE_CHECKING:
    from quell.clock import Clock
    from quell.engine.store import PlaybookStore, PlaybookVersion
    from quell.governance.audit import AuditLog
    from quell.playbooks.catalog import ActionCatalog, SecretCatalog
    from quell.playbooks.ir import Playbook
    from quell.store.database import Database

DRAFT, IN_REVIEW, PUBLISHED = "draft", "in_review", "published"


@dataclass(frozen=True)
class StoredPlaybook:
    """A stored version with the text it was added from and the IR it compiled to."""

    version: PlaybookVersion
    source: str | None
    ir: dict[str, Any]
    versions: list[PlaybookVersion]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API."""
        return {
            **self.version.as_dict(),
            "source": self.source,
            "ir": self.ir,
            "versions": [version.as_dict() for version in self.versions],
        }


class PlaybookLibrary:
    """Compile, store, show and (de)activate playbooks."""

    def __init__(
        self,
        db: Database,
        store: PlaybookStore,
        actions: ActionCatalog,
        secrets: SecretCatalog | None = None,
        *,
        review_required: bool = True,
        audit: AuditLog | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.actions = actions
        self.secrets = secrets
        self.review_required = review_required
        self.audit = audit
        self.clock = clock or store.clock
        # CACAO 2.0 import (quell.engine.cacao.attach): CACAO text is imported, not compiled.
        self.cacao: Any = None

    def compile(self, text: str | bytes, file: str | None = None) -> Playbook:
        """The IR of ``text``; PlaybookInvalid (or InvalidInput for unreadable text) if not.
        CACAO JSON is translated (CacaoInvalid names each error's JSON path)."""
        from quell.playbooks.compiler import parse_playbook

        if self.cacao is not None and _is_cacao_text(text):
            return self.cacao.translate(text, file).playbook  # type: ignore[no-any-return]

        return parse_playbook(
            text, file, actions=self.actions, secrets=self.secrets, playbooks=self.store
        )

    def add(
        self,
        text: str | bytes,
        file: str | None = None,
        *,
        created_by: str | None = None,
        activate: bool = False,
    ) -> PlaybookVersion:
        """Compile and store ``text`` (once per content) as a draft; with ``activate`` (only
        where review is optional) publish it at once."""
        self.refuse_activate(activate)
        if self.cacao is not None and _is_cacao_text(text):
            version, _report = self.cacao.import_text(
                text, file, by=created_by or "unknown", activate=activate
            )
            return version  # type: ignore[no-any-return]
        playbook = self.compile(text, file)
        source = text.decode("utf-8") if isinstance(text, bytes) else text
        return self.add_playbook(playbook, source, created_by=created_by, activate=activate)

    def refuse_activate(self, activate: bool) -> None:
        """Conflict when a new version asks to go live at once where review is required."""
        if activate and self.review_required:
            raise Conflict(
                "a new version is published through review: submit it, and someone else with "
                "playbooks:publish publishes it (playbook_review is 'required')",
                field="activate",
            )

    def add_playbook(
        self,
        playbook: Playbook,
        source: str | None,
        *,
        created_by: str | None = None,
        activate: bool = False,
        event: str = "added",
    ) -> PlaybookVersion:
        """Store a compiled (or imported) playbook as a draft; see :meth:`add`."""
        self.refuse_activate(activate)
        self._refuse_changed(playbook)
        version, created = self.store.add_version(playbook, source=source, created_by=created_by)
        if created:  # the same content added again is the version stored before: no new step
            self._record(version, event, created_by or "unknown", None)
        if activate:
            return self.publish(
                playbook.id,
                version.version,
                by=created_by or "unknown",
                comment="published by its author (review is optional)",
                version_id=version.id,
            )
        return version

    def versions(self, playbook_id: str) -> list[PlaybookVersion]:
        """Every stored version of one playbook, newest first (NotFound when none)."""
        found = [v for v in self.store.list_all() if v.playbook_id == playbook_id]
        if not found:
            raise NotFound(f"no playbook {playbook_id!r}", field="playbook", value=playbook_id)
        return found

    def show(self, playbook_id: str, version: int | None = None) -> StoredPlaybook:
        """The active version (or the given one, else the newest) with its source and IR."""
        chosen = self.store.resolve(playbook_id, version)
        with self.db.read() as conn:
            row = conn.execute(
                select(playbook_versions.c.source, playbook_versions.c.ir).where(
                    playbook_versions.c.id == chosen.id
                )
            ).one()
        return StoredPlaybook(chosen, row.source, orjson.loads(row.ir), self.versions(playbook_id))

    def activate(
        self, playbook_id: str, version: int | None = None, *, by: str = "unknown"
    ) -> PlaybookVersion:
        """Make a published version (the newest published when none is given) the active one;
        where review is optional, a draft is published by it."""
        if version is None:
            published = [v for v in self.versions(playbook_id) if v.published]
            if not published and self.review_required:
                raise Conflict(
                    f"playbook {playbook_id!r} has no published version", field="version"
                )
            chosen = (published or self.versions(playbook_id))[0]
        else:
            chosen = self.store.resolve(playbook_id, version)
        if not chosen.published:
            if self.review_required:
                raise Conflict(
                    f"{playbook_id} version {chosen.version} is {chosen.state}: only a published "
                    "version can be active (submit it for review)",
                    field="version",
                )
            return self.publish(
                playbook_id,
                chosen.version,
                by=by,
                version_id=chosen.id,
                comment="published (review is optional)",
            )
        return self.rollback(
            playbook_id,
            chosen.version,
            by=by,
            version_id=chosen.id,
            comment="activated",
            action="activated",
        )

    def _refuse_changed(self, playbook: Playbook) -> None:
        """A version never changes: other content under a number in use is refused (so the
        version a reviewer read is the one they publish). The stored IR is what is compared: a
        copy of one content stored under two paths before migration 0024 keeps its older digest
        (the digest is unique), yet holds the same content."""
        digest = playbook.digest()
        with self.db.read() as conn:
            taken = conn.execute(
                select(
                    playbook_versions.c.state, playbook_versions.c.digest, playbook_versions.c.ir
                ).where(
                    playbook_versions.c.playbook_id == playbook.id,
                    playbook_versions.c.version == playbook.version,
                )
            ).all()
        for state, other, ir in taken:
            # A number names one content: what a reviewer read is published.
            if other != digest and content_digest(ir) != digest:
                raise Conflict(
                    f"{playbook.id} version {playbook.version} exists ({state or PUBLISHED}) with "
                    "other content, and a version never changes: give the new content a new "
                    "version number",
                    field="version",
                )

    # -- publishing -----------------------------------------------------------------------------

    def _pick(
        self,
        playbook_id: str,
        version: int | None,
        version_id: str | None,
        state: str | None = None,
    ) -> PlaybookVersion:
        """The version meant: by id, by number, or the newest one in ``state``."""
        found = self.versions(playbook_id)
        if version_id is not None:
            return next(v for v in found if v.id == version_id)
        if version is None:
            wanted = [v for v in found if state is None or v.state == state]
            if not wanted:
                raise NotFound(
                    f"playbook {playbook_id!r} has no version in state {state}", field="version"
                )
            return wanted[0]
        return self.store.resolve(playbook_id, version)

    def _record(
        self,
        version: PlaybookVersion,
        action: str,
        by: str,
        comment: str | None,
        conn: Any = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        """The step on the publishing record and in the audit trail, in the caller's
        transaction (or a new one): no state change without its record."""
        now = self.clock.now()
        row = {
            "id": new_id("pbr"),
            "version_id": version.id,
            "playbook_id": version.playbook_id,
            "action": action,
            "by": by,
            "comment": comment,
            "at": now,
        }

        def write(into: Any) -> None:
            into.execute(insert(playbook_reviews).values(row))
            if self.audit is not None:
                event = self.audit.event(
                    by,
                    f"playbook.{action}",
                    f"{version.playbook_id}@{version.version}",
                    {
                        "version_id": version.id,
                        "digest": version.digest,
                        "comment": comment,
                        "before": {"state": version.state, "active": version.active},
                        "after": after or {"state": version.state, "active": version.active},
                    },
                )
                self.audit.append(into, [event])

        if conn is not None:
            write(conn)
            return
        with self.db.write() as own:
            write(own)

    def _move(
        self,
        version: PlaybookVersion,
        expect: tuple[str, ...],
        state: str,
        now: datetime,
        conn: Any,
    ) -> None:
        done = conn.execute(
            update(playbook_versions)
            .where(
                playbook_versions.c.id == version.id, playbook_versions.c.state.in_(list(expect))
            )
            .values(state=state)
        )
        if not done.rowcount:
            raise Conflict(f"{version.playbook_id} version {version.version} changed meanwhile")

    def submit(
        self, playbook_id: str, version: int | None = None, *, by: str, comment: str | None = None
    ) -> PlaybookVersion:
        """Put a draft up for review."""
        chosen = self._pick(playbook_id, version, None, DRAFT if version is None else None)
        if chosen.state != DRAFT:
            raise Conflict(f"{playbook_id} version {chosen.version} is {chosen.state}, not a draft")
        with self.db.write() as conn:
            self._move(chosen, (DRAFT,), IN_REVIEW, self.clock.now(), conn)
            self._record(
                chosen,
                "submitted",
                by,
                comment,
                conn,
                {"state": IN_REVIEW, "active": chosen.active},
            )
        return self._pick(playbook_id, None, chosen.id)

    def publish(
        self,
        playbook_id: str,
        version: int | None = None,
        *,
        by: str,
        comment: str | None = None,
        version_id: str | None = None,
    ) -> PlaybookVersion:
        """Approve a version under review: it is published and becomes the active one. Its
        author cannot (where review is required); a comment says why."""
        chosen = self._pick(
            playbook_id,
            version,
            version_id,
            IN_REVIEW if version is None and version_id is None else None,
        )
        if chosen.state == PUBLISHED:
            raise Conflict(
                f"{playbook_id} version {chosen.version} is published already; "
                "roll back to make it active again"
            )
        unsupported = self.store.ir(chosen.id).extensions.get("unsupported")
        if unsupported:
            first = unsupported[0]
            raise Conflict(
                f"{playbook_id} version {chosen.version} needs what Quell does not support "
                f"({first.get('construct')} at {first.get('path')}: {first.get('reason')}; "
                f"{len(unsupported)} in all): resolve them and import it again",
                field="version",
            )
        if self.review_required:
            if chosen.state != IN_REVIEW:
                raise Conflict(
                    f"{playbook_id} version {chosen.version} is {chosen.state}: "
                    "submit it for review first"
                )
            if _same(by, chosen.created_by):
                raise PermissionDenied(
                    f"{by} wrote {playbook_id} version {chosen.version} and cannot approve its "
                    "publication: someone else with playbooks:publish must",
                    rule="separation_of_duties",
                )
            if not (comment or "").strip():
                raise InvalidInput("a publication needs a comment saying why", field="comment")
        if any(
            v.published and v.version == chosen.version and v.id != chosen.id
            for v in self.versions(playbook_id)
        ):
            raise Conflict(
                f"{playbook_id} version {chosen.version} was published with other content: "
                "give this one a new version number",
                field="version",
            )
        now = self.clock.now()
        with self.db.write() as conn:
            self._move(chosen, (DRAFT, IN_REVIEW), PUBLISHED, now, conn)
            conn.execute(
                update(playbook_versions)
                .where(playbook_versions.c.id == chosen.id)
                .values(published_by=by, published_at=now)
            )
            self.store.activate_version(conn, chosen.id, now)
            self._record(
                chosen, "published", by, comment, conn, {"state": PUBLISHED, "active": True}
            )
        return self._pick(playbook_id, None, chosen.id)

    def reject(
        self, playbook_id: str, version: int | None = None, *, by: str, comment: str | None = None
    ) -> PlaybookVersion:
        """Send a version under review back to draft, saying why."""
        chosen = self._pick(playbook_id, version, None, IN_REVIEW if version is None else None)
        if chosen.state != IN_REVIEW:
            raise Conflict(
                f"{playbook_id} version {chosen.version} is {chosen.state}, not in review"
            )
        if not (comment or "").strip():
            raise InvalidInput("a rejection needs a comment saying why", field="comment")
        with self.db.write() as conn:
            self._move(chosen, (IN_REVIEW,), DRAFT, self.clock.now(), conn)
            self._record(
                chosen, "rejected", by, comment, conn, {"state": DRAFT, "active": chosen.active}
            )
        return self._pick(playbook_id, None, chosen.id)

    def rollback(
        self,
        playbook_id: str,
        version: int | None = None,
        *,
        by: str,
        comment: str | None = None,
        version_id: str | None = None,
        action: str = "rolled_back",
    ) -> PlaybookVersion:
        """Make an earlier published version the active one again (it was reviewed when it
        was published; nothing about it changes)."""
        if version is None and version_id is None:
            raise InvalidInput("say which version to roll back to", field="version")
        chosen = self._pick(playbook_id, version, version_id)
        if not chosen.published:
            raise Conflict(
                f"{playbook_id} version {chosen.version} was never published "
                f"({chosen.state}); only a published version can be rolled back to"
            )
        if chosen.active:
            return chosen
        with self.db.write() as conn:
            self.store.activate_version(conn, chosen.id, self.clock.now())
            self._record(chosen, action, by, comment, conn, {"state": PUBLISHED, "active": True})
        return self._pick(playbook_id, None, chosen.id)

    def reviews(self, playbook_id: str) -> list[dict[str, Any]]:
        """The publishing record of a playbook, oldest first."""
        versions = {v.id: v.version for v in self.versions(playbook_id)}
        with self.db.read() as conn:
            rows = conn.execute(
                select(playbook_reviews)
                .where(playbook_reviews.c.playbook_id == playbook_id)
                .order_by(playbook_reviews.c.at, playbook_reviews.c.id)
            ).all()
        return [
            {
                "version": versions.get(row.version_id),
                "version_id": row.version_id,
                "action": row.action,
                "by": row.by,
                "comment": row.comment,
                "at": row.at,
            }
            for row in rows
        ]

    def diff(self, playbook_id: str, old: int, new: int) -> list[str]:
        """A unified diff between two versions' sources (their IR where no source was kept)."""
        texts = []
        for number in (old, new):
            shown = self.show(playbook_id, number)
            text = (
                shown.source
                or orjson.dumps(
                    shown.ir, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
                ).decode()
            )
            texts.append((f"{playbook_id}@{number}", text.splitlines(keepends=True)))
        (a_name, a), (b_name, b) = texts
        return list(difflib.unified_diff(a, b, fromfile=a_name, tofile=b_name))

    def deactivate(self, playbook_id: str) -> None:
        """Stop the playbook's triggers; its runs go on (NotFound when none is active)."""
        self.store.deactivate(playbook_id)


class ConfiguredSecrets:
    """The secrets the configuration provides: environment variables, or an enabled connector
    instance that has the secret set (a step runs against such an instance)."""

    def __init__(self, env: SecretCatalog, instances: Any) -> None:
        self.env = env
        self.instances = instances

    def provides(self, connector: str, secret: str) -> bool:
        """Whether ``connector`` has ``secret`` configured, one way or the other."""
        if self.env.provides(connector, secret):
            return True
        return any(
            instance.enabled and secret in instance.secret_names
            for instance in self.instances.list_all(connector)
        )


def _is_cacao_text(text: str | bytes) -> bool:
    """Whether playbook text is CACAO JSON (an object with ``"type": "playbook"`` and a CACAO
    ``spec_version``) rather than Quell's YAML."""
    stripped = text.lstrip("\ufeff \t\r\n") if isinstance(text, str) else text.lstrip()
    if isinstance(stripped, bytes):
        stripped = stripped.removeprefix(b"\xef\xbb\xbf").lstrip()  # a BOM some editors write
    if not (stripped.startswith("{") if isinstance(stripped, str) else stripped.startswith(b"{")):
        return False
    try:
        data = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return False
    from quell.playbooks.cacao.importer import is_cacao

    return is_cacao(data)


def _same(actor: str, author: str | None) -> bool:
    """Whether ``actor`` is the author (``cli:alice``, ``user:alice`` and ``alice`` are one)."""
    from quell.engine.waits import person

    return bool(author) and person(actor) == person(author)


__all__ = [
    "DRAFT",
    "IN_REVIEW",
    "PUBLISHED",
    "ConfiguredSecrets",
    "PlaybookLibrary",
    "StoredPlaybook",
]
