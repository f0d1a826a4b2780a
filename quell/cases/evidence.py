"""Evidence attached to incidents: content-addressed blobs with a chain of custody.

The bytes live under the evidence root (``DATA_DIR/evidence``) named by their SHA-256,
``root/ab/cd/abcd…``, written once: a second attachment of the same bytes reuses the blob.
An upload streams into a temporary file in the root while it is hashed and counted (over the
size limit it is refused and the temporary file removed), is fsynced, then renamed into place
and its directory fsynced, so a blob is either whole or absent.

Each attachment is an ``incident_evidence`` row; everything done to it is an
``evidence_custody`` row (``added``, ``read``, ``verified``, ``verify_failed``), oldest first.
A read is recorded *before* any byte is handed out, and the bytes handed out are checked
against the SHA-256 on the way: a blob changed or removed on disk is refused with
:class:`EvidenceIntegrityError` and recorded as ``verify_failed``.

A blob whose database rows failed to commit stays behind unreferenced (it may be reused by a
later attachment of the same bytes); nothing ever deletes a blob.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import os
import re
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import Connection, select, update

from quell.clock import Clock
from quell.errors import Conflict, InvalidInput, NotFound, TooLarge
from quell.governance.audit import AuditLog
from quell.ids import new_id
from quell.store.database import Database
from quell.store.schema import evidence_custody, incident_events, incident_evidence, incidents

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_NAME_CHARS = 255
MAX_DESCRIPTION_CHARS = 20_000
MAX_PURPOSE_CHARS = 1000
CHUNK = 1024 * 1024
SPOOL_BYTES = 1024 * 1024  # a verified copy handed out stays in memory up to this size
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]"
_MEDIA_TYPE = re.compile(
    rf"^{_TOKEN}{{1,63}}/{_TOKEN}{{1,63}}"
    rf'(?:\s*;\s*{_TOKEN}{{1,32}}=(?:{_TOKEN}{{1,64}}|"[^"\\\x00-\x1f]{{0,64}}"))*$'
)
_TEMP_PREFIX = ".incoming-"


class Readable(Protocol):
    """What evidence is read from: a binary file, or anything with its ``read``."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes; ``b""`` at the end."""
        ...


class CustodyAction:
    """What a custody entry records."""

    ADDED = "added"
    READ = "read"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"


class EvidenceIntegrityError(Conflict):
    """The stored blob is missing, or its bytes no longer match the recorded SHA-256."""


@dataclass(frozen=True)
class Evidence:
    """A file attached to an incident; its bytes are the blob named by ``sha256``."""

    id: str
    incident_id: str
    sha256: str
    name: str
    media_type: str
    size: int
    description: str | None
    added_by: str
    added_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "incident_id": self.incident_id,
            "sha256": self.sha256,
            "name": self.name,
            "media_type": self.media_type,
            "size": self.size,
            "description": self.description,
            "added_by": self.added_by,
            "added_at": self.added_at,
        }


@dataclass(frozen=True)
class CustodyEvent:
    """One entry of an evidence's chain of custody."""

    id: str
    evidence_id: str
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "evidence_id": self.evidence_id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "detail": self.detail,
        }


def clean_name(name: str) -> str:
    """A file name safe to store and to offer for download: path separators become ``_``,
    characters that are not printable are dropped, at most 255 characters (keeping a short
    extension). A name of nothing but dots or spaces is refused."""
    text = unicodedata.normalize("NFC", str(name))
    text = text.replace("/", "_").replace("\\", "_")
    text = "".join(char for char in text if char.isprintable()).strip()
    if not text.strip(". "):
        raise InvalidInput("evidence needs a name of printable characters", field="name")
    if len(text) > MAX_NAME_CHARS:
        stem, dot, extension = text.rpartition(".")
        if dot and stem and 0 < len(extension) <= 16:
            text = stem[: MAX_NAME_CHARS - len(extension) - 1] + "." + extension
        else:
            text = text[:MAX_NAME_CHARS]
    return text


def check_media_type(media_type: str) -> str:
    """A media type such as ``application/pdf`` (parameters allowed), at most 128 chars."""
    text = media_type.strip()
    if len(text) > 128 or not _MEDIA_TYPE.match(text):
        raise InvalidInput(
            f"{media_type[:140]!r} is not a media type such as application/octet-stream",
            field="media_type",
        )
    kind, _, rest = text.partition(";")
    return kind.lower() + (";" + rest if rest else "")


class EvidenceService:
    """Attach, list, read and verify evidence; every access is on the chain of custody."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        root: Path,
        audit: AuditLog | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.db = db
        self.clock = clock
        self.root = root
        self.audit = audit
        self.max_bytes = max_bytes

    # -- adding ---------------------------------------------------------------------------------

    def add(
        self,
        incident_id: str,
        source: bytes | Readable,
        *,
        name: str,
        media_type: str = "application/octet-stream",
        by: str,
        description: str | None = None,
    ) -> Evidence:
        """Store ``source`` (bytes or a binary file read to its end) as evidence of the
        incident. Refused: an unknown incident (NotFound), a merged one (Conflict), more than
        ``max_bytes`` (TooLarge, nothing left behind)."""
        clean = clean_name(name)
        kind = check_media_type(media_type)
        text = (description or "").strip() or None
        if text is not None and len(text) > MAX_DESCRIPTION_CHARS:
            raise InvalidInput(
                f"a description is at most {MAX_DESCRIPTION_CHARS} characters", field="description"
            )
        actor = _actor(by)
        with self.db.read() as conn:
            _open_incident(conn, incident_id)  # before streaming what may be refused anyway
        stream: Readable = (
            io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
        )
        digest, size, reused = self._store(stream)
        now = self.clock.now()
        evidence = Evidence(
            new_id("evd"), incident_id, digest, clean, kind, size, text, actor, now
        )  # fmt: skip
        detail = {"sha256": digest, "size": size, "name": clean, "blob": _blob_state(reused)}
        with self.db.write() as conn:
            _open_incident(conn, incident_id, lock=True)
            conn.execute(incident_evidence.insert().values(**evidence.as_dict()))
            self._custody(conn, evidence.id, CustodyAction.ADDED, actor, detail, now)
            added = {"evidence_id": evidence.id, "name": clean, "sha256": digest, "size": size}
            conn.execute(
                incident_events.insert().values(
                    id=new_id("iev"), incident_id=incident_id, kind="evidence_added", at=now,
                    actor=actor, data=added,
                )
            )  # fmt: skip
            conn.execute(
                update(incidents).where(incidents.c.id == incident_id).values(updated_at=now)
            )
        self._audit(actor, "evidence.added", evidence.id, {"incident_id": incident_id, **detail})
        return evidence

    def _store(self, source: Readable) -> tuple[str, int, bool]:
        """Stream into a temporary file, then into place: (sha256, size, blob reused)."""
        _make_dir(self.root)
        handle, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.root)
        temp = Path(name)
        try:
            hasher = hashlib.sha256()
            size = 0
            with os.fdopen(handle, "wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise TooLarge(
                            f"evidence is larger than the {self.max_bytes}-byte limit",
                            limit=self.max_bytes,
                        )
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                if os.name == "posix":
                    os.fchmod(out.fileno(), 0o400)  # read-only: blobs are written once
                os.fsync(out.fileno())
            digest = hasher.hexdigest()
            final = self.blob_path(digest)
            for folder in (final.parent.parent, final.parent):
                _make_dir(folder)
            if final.is_file() and _hash_file(final) == (digest, size):
                temp.unlink()
                return digest, size, True
            temp.replace(final)  # new, or repairs a blob that was damaged on disk
            _fsync_dir(final.parent)
            return digest, size, False
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    # -- reading --------------------------------------------------------------------------------

    def open(
        self, evidence_id: str, *, by: str, purpose: str | None = None
    ) -> tuple[Evidence, IO[bytes]]:
        """The evidence and its bytes, as a file positioned at the start (close it).

        The read is on the chain of custody before a byte is read; the bytes handed out are a
        copy checked against the SHA-256, so what the caller gets is what was attached. A blob
        that is missing or changed raises :class:`EvidenceIntegrityError` (``verify_failed``).
        """
        actor = _actor(by)
        reason = (purpose or "").strip() or None
        if reason is not None and len(reason) > MAX_PURPOSE_CHARS:
            raise InvalidInput(
                f"a purpose is at most {MAX_PURPOSE_CHARS} characters", field="purpose"
            )
        evidence = self.get(evidence_id)
        self._record(evidence, CustodyAction.READ, actor, {"purpose": reason})
        _make_dir(self.root)
        # Handed to the caller, who closes it; closed here on any error.
        copy: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_BYTES, dir=str(self.root)
        )
        try:
            problem = self._check(evidence, copy)
            if problem is not None:
                self._failed(evidence, actor, problem)
            copy.seek(0)
        except BaseException:
            copy.close()
            raise
        return evidence, copy

    def verify(self, evidence_id: str, *, by: str) -> bool:
        """Whether the blob still matches its SHA-256; recorded as ``verified`` or
        ``verify_failed``."""
        actor = _actor(by)
        evidence = self.get(evidence_id)
        problem = self._check(evidence, None)
        if problem is not None:
            self._record(evidence, CustodyAction.VERIFY_FAILED, actor, problem)
            return False
        self._record(evidence, CustodyAction.VERIFIED, actor, {"sha256": evidence.sha256})
        return True

    def _check(self, evidence: Evidence, copy: IO[bytes] | None) -> dict[str, Any] | None:
        """Hash the blob (copying it to ``copy``); what is wrong with it, or None."""
        path = self.blob_path(evidence.sha256)
        hasher = hashlib.sha256()
        size = 0
        try:
            with path.open("rb") as blob:
                while chunk := blob.read(CHUNK):
                    size += len(chunk)
                    hasher.update(chunk)
                    if copy is not None:
                        copy.write(chunk)
        except FileNotFoundError:
            return {"problem": "missing", "sha256": evidence.sha256}
        except OSError as exc:
            return {"problem": "unreadable", "sha256": evidence.sha256, "error": exc.strerror}
        found = hasher.hexdigest()
        if found != evidence.sha256 or size != evidence.size:
            return {
                "problem": "mismatch",
                "sha256": evidence.sha256,
                "found_sha256": found,
                "size": evidence.size,
                "found_size": size,
            }
        return None

    def _failed(self, evidence: Evidence, actor: str, problem: dict[str, Any]) -> None:
        self._record(evidence, CustodyAction.VERIFY_FAILED, actor, problem)
        what = (
            "is missing from the evidence store"
            if problem["problem"] == "missing"
            else "does not match its SHA-256 (changed on disk)"
            if problem["problem"] == "mismatch"
            else "cannot be read"
        )
        raise EvidenceIntegrityError(
            f"evidence {evidence.id} ({evidence.name}) {what}; its bytes are not handed out",
            field="id",
            **problem,
        )

    def get(self, evidence_id: str) -> Evidence:
        """One evidence's record."""
        with self.db.read() as conn:
            row = conn.execute(
                select(incident_evidence).where(incident_evidence.c.id == evidence_id)
            ).first()
        if row is None:
            raise NotFound(f"no evidence {evidence_id!r}", field="id")
        return _evidence(row)

    def list(self, incident_id: str) -> builtins.list[Evidence]:
        """An incident's evidence, oldest first."""
        with self.db.read() as conn:
            found = conn.execute(select(incidents.c.id).where(incidents.c.id == incident_id))
            if found.first() is None:
                raise NotFound(f"no incident {incident_id!r}", field="id")
            rows = conn.execute(
                select(incident_evidence)
                .where(incident_evidence.c.incident_id == incident_id)
                .order_by(incident_evidence.c.added_at, incident_evidence.c.id)
            ).all()
        return [_evidence(row) for row in rows]

    def custody(self, evidence_id: str) -> builtins.list[CustodyEvent]:
        """The chain of custody, oldest first."""
        with self.db.read() as conn:
            found = conn.execute(
                select(incident_evidence.c.id).where(incident_evidence.c.id == evidence_id)
            )
            if found.first() is None:
                raise NotFound(f"no evidence {evidence_id!r}", field="id")
            rows = conn.execute(
                select(evidence_custody)
                .where(evidence_custody.c.evidence_id == evidence_id)
                .order_by(evidence_custody.c.at, evidence_custody.c.id)
            ).all()
        return [
            CustodyEvent(r.id, r.evidence_id, r.at, r.actor, r.action, dict(r.detail)) for r in rows
        ]

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this SHA-256 lives."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InvalidInput("a SHA-256 is 64 lowercase hex digits", field="sha256")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    # -- shared ---------------------------------------------------------------------------------

    def _record(
        self, evidence: Evidence, action: str, actor: str, detail: Mapping[str, Any]
    ) -> None:
        with self.db.write() as conn:
            self._custody(conn, evidence.id, action, actor, detail, self.clock.now())
        self._audit(actor, f"evidence.{action}", evidence.id, detail)

    def _custody(
        self,
        conn: Connection,
        evidence_id: str,
        action: str,
        actor: str,
        detail: Mapping[str, Any],
        now: datetime,
    ) -> None:
        conn.execute(
            evidence_custody.insert().values(
                id=new_id("cus"), evidence_id=evidence_id, at=now, actor=actor, action=action,
                detail=dict(detail),
            )
        )  # fmt: skip

    def _audit(self, actor: str, action: str, subject: str, detail: Mapping[str, Any]) -> None:
        if self.audit is not None:
            self.audit.record(actor, action, subject, detail)


def _open_incident(conn: Connection, incident_id: str, *, lock: bool = False) -> None:
    query = select(incidents.c.id, incidents.c.merged_into).where(incidents.c.id == incident_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"no incident {incident_id!r}", field="id")
    if row.merged_into:
        raise Conflict(
            f"incident {incident_id} was merged into {row.merged_into}; add evidence there",
            field="id",
        )


def _actor(by: str) -> str:
    name = str(by).strip()[:128]
    if not name:
        raise InvalidInput("who acts on evidence must be named", field="by")
    return name


def _blob_state(reused: bool) -> str:
    return "existing" if reused else "new"


def _hash_file(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as blob:
        while chunk := blob.read(CHUNK):
            size += len(chunk)
            hasher.update(chunk)
    return hasher.hexdigest(), size


def _make_dir(folder: Path) -> None:
    """Create ``folder`` (private to this user) and make its entry durable in its parent."""
    if folder.is_dir():
        return
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _fsync_dir(folder.parent)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a directory to fsync it
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def _evidence(row: Any) -> Evidence:
    return Evidence(
        row.id, row.incident_id, row.sha256, row.name, row.media_type, row.size, row.description,
        row.added_by, row.added_at,
    )  # fmt: skip


__all__ = [
    "CustodyAction",
    "CustodyEvent",
    "Evidence",
    "EvidenceIntegrityError",
    "EvidenceService",
    "Readable",
    "check_media_type",
    "clean_name",
]
