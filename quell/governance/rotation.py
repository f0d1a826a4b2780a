"""Rotating the data key: every sealed value moved to a new key, safe against a crash anywhere.

``quell secrets rotate-key`` runs three steps:

1. **Begin.** In one transaction a new random data key becomes active and the current one
   retiring (:meth:`~quell.governance.keyring.KeyRing.begin_rotation`). From then on every
   process seals under the new key and opens with either.
2. **Re-seal.** Each sealed value under another key is opened and sealed again under the new
   key, row by row, each row in its own short transaction, written only if the row still holds
   the bytes that were read (a secret changed meanwhile is looked at again by the next pass). A
   value already under the new key is skipped, so a run after a crash does only what is left.
   Passes repeat until one finds nothing to move.
3. **Retire.** Only when no value is left under the old key is its wrapped material erased.

A crash at any point leaves every value openable: both keys are kept until step 3, which runs
only once nothing uses the old key. Running the command again finds the unfinished rotation (a
key still retiring) and finishes it instead of starting another. A value under the old key that
does not open (altered, or copied from another row) holds the old key back: the command names
it, to be set again or cleared.

Every process reads which key is active at each seal, so a secret set during a rotation is
sealed under the new key. The one case left: a process that read the active key before the
rotation began and writes its value only after the rotation has finished (the few milliseconds
between sealing one value and writing it, against the whole rotation). ``quell secrets status``
would show that value under the retired key, and it must be set again.

Where sealed values live is :data:`SEALED_COLUMNS`; a table that stores a sealed value must be
listed there, or a rotation would retire the key it needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, select, update

from quell.errors import ConfigurationError
from quell.governance.audit import AuditLog
from quell.governance.keyring import DataKey, KeyRecord, KeyState
from quell.governance.secrets import SecretBox, key_id_of
from quell.store.database import Database
from quell.store.schema import (
    connector_instances,
    intel_feeds,
    oidc_logins,
    playbook_credentials,
    sources,
)

_PAGE = 200
MAX_PASSES = 5


@dataclass(frozen=True)
class SealedColumn:
    """A column of sealed values, and the purpose each row's value was sealed for
    (``f"{prefix}:{name}"``, as the owning service seals it)."""

    table: Table
    column: str
    prefix: str
    key: str = "id"
    name: str = "name"

    @property
    def where(self) -> str:
        """``table.column``, as reports name it."""
        return f"{self.table.name}.{self.column}"

    def purpose(self, name: str) -> str:
        """The purpose a row's value is sealed for."""
        return f"{self.prefix}:{name}"


SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(connector_instances, "secrets", "connector"),  # quell.connectors.instances
    SealedColumn(sources, "secret", "source"),  # quell.ingest.sources
    SealedColumn(intel_feeds, "secret", "intel-feed"),  # quell.intel.feeds
    # quell.governance.oidc: a PKCE verifier, for a login in flight
    SealedColumn(oidc_logins, "code_verifier", "oidc_login", key="state_hash", name="state_hash"),
    # quell.engine.cacao: an imported CACAO playbook's inline credentials
    SealedColumn(playbook_credentials, "secret", "playbook-credential", name="id"),
)


@dataclass(frozen=True)
class _Value:
    key: Any
    name: str
    sealed: bytes


def _values(db: Database, column: SealedColumn) -> Iterator[_Value]:
    """Every non-NULL value of ``column``, page by page (each page its own read)."""
    table = column.table
    key, name, value = table.c[column.key], table.c[column.name], table.c[column.column]
    after: Any = None
    while True:
        query = select(key, name, value).where(value.is_not(None)).order_by(key).limit(_PAGE)
        if after is not None:
            query = query.where(key > after)
        with db.read() as conn:
            rows = list(conn.execute(query))
        for row in rows:
            yield _Value(row[0], str(row[1]), bytes(row[2]))
        if len(rows) < _PAGE:
            return
        after = rows[-1][0]


@dataclass(frozen=True)
class SecretsStatus:
    """The data keys, and how many stored values each one sealed, per column."""

    keys: list[KeyRecord]
    values: dict[str, dict[str, int]]  # "sources.secret" -> {key id: count}

    def totals(self) -> dict[str, int]:
        """Values per key id, over every column."""
        total: Counter[str] = Counter()
        for counts in self.values.values():
            total.update(counts)
        return dict(total)

    def unknown(self) -> dict[str, int]:
        """Values under key ids this database does not hold (they cannot be opened)."""
        known = {record.id for record in self.keys}
        return {key: count for key, count in self.totals().items() if key not in known}

    @property
    def rotating(self) -> bool:
        """Whether a rotation is unfinished (a key is still retiring)."""
        return any(record.state == KeyState.RETIRING for record in self.keys)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; key ids and counts only."""
        totals = self.totals()
        return {
            "keys": [
                {**record.as_dict(), "values": totals.get(record.id, 0)} for record in self.keys
            ],
            "values": self.values,
            "unknown_keys": self.unknown(),
            "rotation_unfinished": self.rotating,
        }


def status(box: SecretBox, db: Database) -> SecretsStatus:
    """Which data keys exist and how many values each one sealed."""
    values: dict[str, dict[str, int]] = {}
    for column in SEALED_COLUMNS:
        counts: Counter[str] = Counter()
        for value in _values(db, column):
            key_id = key_id_of(value.sealed)
            counts["(not sealed)" if key_id is None else key_id.hex()] += 1
        values[column.where] = dict(counts)
    return SecretsStatus(keys=box.ring.records(), values=values)


@dataclass
class RotationResult:
    """What a run of :func:`rotate` did."""

    old_key: str
    new_key: str
    resumed: bool
    resealed: dict[str, int] = field(default_factory=dict)  # per column
    already: int = 0  # values under the new key before this run (set since, or by an earlier run)
    other_keys: int = 0  # values under neither key: they open with neither, left as they are
    not_opening: list[str] = field(default_factory=list)  # "sources.secret fw": under the old key
    passes: int = 0
    retired: bool = False

    @property
    def total_resealed(self) -> int:
        """Values re-sealed by this run."""
        return sum(self.resealed.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (and what the audit event holds): key ids, counts, row names."""
        return {
            "old_key": self.old_key,
            "new_key": self.new_key,
            "resumed": self.resumed,
            "resealed": self.resealed,
            "already_under_new_key": self.already,
            "under_other_keys": self.other_keys,
            "not_opening": self.not_opening,
            "passes": self.passes,
            "retired": self.retired,
        }


class _Pass:
    def __init__(self) -> None:
        self.moved = 0
        self.lost = 0  # rows that changed between the read and the write
        self.already = 0
        self.other = 0
        self.not_opening: list[str] = []


def rotate(
    box: SecretBox,
    db: Database,
    audit: AuditLog,
    *,
    actor: str,
    after_each: Callable[[int], None] | None = None,
) -> RotationResult:
    """Rotate the data key, or finish an unfinished rotation (see the module's docs).

    ``after_each`` is called with 0 once the new key is committed, then with the running count
    after each value re-sealed and committed.
    """
    keys = box.ring.begin_rotation()
    old, new = keys.old, keys.new
    result = RotationResult(old_key=old.hex_id, new_key=new.hex_id, resumed=keys.resumed)
    audit.record(
        actor,
        "secrets.rotation_resumed" if keys.resumed else "secrets.rotation_started",
        new.hex_id,
        {"old_key": old.hex_id, "new_key": new.hex_id},
    )
    if after_each is not None:
        after_each(0)
    moved = Counter[str]()
    settled = False
    while not settled and result.passes < MAX_PASSES:
        result.passes += 1
        one = _Pass()
        for column in SEALED_COLUMNS:
            _reseal_column(box, db, column, old, new, one, moved, after_each)
        if result.passes == 1:  # later passes see this run's own work as "already"
            result.already = one.already
        result.other_keys = one.other
        result.not_opening = one.not_opening
        settled = one.moved == 0 and one.lost == 0  # nothing left to move but what won't open
    result.resealed = {column.where: moved[column.where] for column in SEALED_COLUMNS}
    if result.not_opening or not settled:
        audit.record(actor, "secrets.rotation_blocked", old.hex_id, result.as_dict())
        return result
    box.ring.retire(old)  # False when a run finishing the same rotation retired it first
    record = box.ring.describe(old.id)
    result.retired = record is not None and record.state == KeyState.RETIRED
    audit.record(actor, "secrets.key_retired", old.hex_id, result.as_dict())
    return result


def _reseal_column(
    box: SecretBox,
    db: Database,
    column: SealedColumn,
    old: DataKey,
    new: DataKey,
    one: _Pass,
    moved: Counter[str],
    after_each: Callable[[int], None] | None,
) -> None:
    table = column.table
    for value in _values(db, column):
        key_id = key_id_of(value.sealed)
        if key_id == new.id:
            one.already += 1
            continue
        if key_id != old.id:
            one.other += 1  # not sealed, or under a key that opens nothing here
            continue
        purpose = column.purpose(value.name)
        try:
            plain = box.open(value.sealed, purpose=purpose)
        except ConfigurationError:
            one.not_opening.append(f"{column.where} {value.name}")
            continue
        resealed = box.seal(plain, purpose=purpose, key=new)
        with db.write() as conn:
            written = conn.execute(
                update(table)
                .where(table.c[column.key] == value.key)
                .where(table.c[column.column] == value.sealed)
                .values({column.column: resealed})
            ).rowcount
        if not written:
            one.lost += 1  # changed (or removed) meanwhile: the next pass looks again
            continue
        one.moved += 1
        moved[column.where] += 1
        if after_each is not None:
            after_each(sum(moved.values()))


__all__ = [
    "MAX_PASSES",
    "SEALED_COLUMNS",
    "RotationResult",
    "SealedColumn",
    "SecretsStatus",
    "rotate",
    "status",
]
