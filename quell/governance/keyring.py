"""Data keys: the keys that seal secrets at rest, and where each stands in a rotation.

Secrets are sealed (:mod:`quell.governance.secrets`) under a *data key*, so that it can be
rotated without touching the secret key, which also signs links and tokens. Before any rotation
the data key is derived from the secret key (HKDF), as it always was; it is never stored. A
rotation makes a random 256-bit key and keeps it in the ``secret_keys`` table, wrapped with
AES-256-GCM under another key derived from the secret key: every process of a cluster, on any
machine, finds it in the database they share, and the database alone opens nothing.

A key is ``active`` (it seals new values; exactly one), ``retiring`` (it still opens values
while a rotation moves them to the active key; at most one) or ``retired`` (its wrapped
material is erased: it opens nothing, and a retired derived key is refused).

Which key is active is read from the database at every seal, so that a process started before a
rotation never seals under a key that is being retired. Opening looks the value's key id up in
memory and reloads the keys only when it meets an id it does not know.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import SYSTEM_CLOCK, Clock
from quell.errors import ConfigurationError, Conflict
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.schema import secret_keys

KEY_ID_BYTES = 8
_KEY_BYTES = 32
_NONCE_BYTES = 12
_DERIVED_INFO = b"quell secrets at rest v1"  # the data key before any rotation: never change
_WRAP_INFO = b"quell data key wrapping v1"


class KeyKind(StrEnum):
    """Where a data key comes from."""

    DERIVED = "derived"  # computed from the secret key; never stored
    RANDOM = "random"  # made by a rotation; stored wrapped under the secret key


class KeyState(StrEnum):
    """What a data key may do now."""

    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"


@dataclass(frozen=True)
class DataKey:
    """A data key in memory: its id (as sealed values carry it) and its cipher."""

    id: bytes
    kind: KeyKind
    aead: AESGCM = field(repr=False, compare=False)

    @property
    def hex_id(self) -> str:
        """The id as shown and stored: 16 hex digits."""
        return self.id.hex()


@dataclass(frozen=True)
class KeyRecord:
    """A data key as anyone may see it: never its material."""

    id: str
    kind: KeyKind
    state: KeyState
    created_at: datetime | None
    retired_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "state": self.state.value,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
        }


@dataclass(frozen=True)
class RotationKeys:
    """The two keys of a rotation: values move from ``old`` to ``new``."""

    old: DataKey
    new: DataKey
    resumed: bool  # True: an unfinished rotation was found and is being finished


def _hkdf(secret_key: SecretValue, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info).derive(
        secret_key.reveal().encode()
    )


def derived_key(secret_key: SecretValue) -> DataKey:
    """The data key computed from the secret key: the one in use until the first rotation."""
    material = _hkdf(secret_key, _DERIVED_INFO)
    key_id = hashlib.sha256(material).digest()[:KEY_ID_BYTES]
    return DataKey(key_id, KeyKind.DERIVED, AESGCM(material))


class KeyRing:
    """The data keys: which one seals, which ones open, and the steps of a rotation.

    Without a database it holds only the derived key (for tools and tests that seal in memory).
    """

    def __init__(
        self, secret_key: SecretValue, db: Database | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.db = db
        self.clock = clock
        self._derived = derived_key(secret_key)
        self._wrapper = AESGCM(_hkdf(secret_key, _WRAP_INFO))
        # With a database, even the derived key is known only once the table says it is live.
        self._known: dict[bytes, DataKey] = (
            {} if db is not None else {self._derived.id: self._derived}
        )
        self._lock = threading.Lock()

    # -- using keys -------------------------------------------------------------------------

    def active(self) -> DataKey:
        """The key new values are sealed with, as the database says now."""
        if self.db is None:
            return self._derived
        with self.db.read() as conn:
            rows = list(conn.execute(select(secret_keys)))
        if not rows:
            return self._derived
        active = [row for row in rows if row.state == KeyState.ACTIVE]
        if len(active) != 1:
            raise ConfigurationError(
                "the secret_keys table has no active data key; restore it from a backup"
            )
        key = self._key_of(active[0])
        if key is None:
            raise ConfigurationError("the active data key has no key material")
        self._known.setdefault(key.id, key)
        return key

    def find(self, key_id: bytes) -> DataKey | None:
        """The key with this id, if this ring may open with it (None: unknown or retired)."""
        found = self._known.get(key_id)
        if found is not None or self.db is None:
            return found
        with self._lock:
            self._reload()
        return self._known.get(key_id)

    def describe(self, key_id: bytes) -> KeyRecord | None:
        """The stored record of a key id, if there is one (to say why a value does not open)."""
        if self.db is None:
            return None
        with self.db.read() as conn:
            row = conn.execute(select(secret_keys).where(secret_keys.c.id == key_id.hex())).first()
        return _record(row) if row is not None else None

    def records(self) -> list[KeyRecord]:
        """Every key there is or was, oldest first; the derived key alone before any rotation."""
        rows = []
        if self.db is not None:
            with self.db.read() as conn:
                query = select(secret_keys).order_by(secret_keys.c.created_at, secret_keys.c.kind)
                rows = list(conn.execute(query))
        if not rows:
            return [KeyRecord(self._derived.hex_id, KeyKind.DERIVED, KeyState.ACTIVE, None, None)]
        return [_record(row) for row in rows]

    def _reload(self) -> None:
        assert self.db is not None
        with self.db.read() as conn:
            rows = list(conn.execute(select(secret_keys)))
        if not rows:  # never rotated: the derived key is the only one
            self._known.setdefault(self._derived.id, self._derived)
            return
        for row in rows:
            if row.state == KeyState.RETIRED:
                continue
            key = self._key_of(row)
            if key is not None:
                self._known.setdefault(key.id, key)

    def _key_of(self, row: Any) -> DataKey | None:
        key_id = bytes.fromhex(row.id)
        if row.kind == KeyKind.DERIVED:
            return self._derived if key_id == self._derived.id else None
        if row.wrapped is None:
            return None
        known = self._known.get(key_id)
        if known is not None:
            return known
        wrapped = bytes(row.wrapped)
        try:
            material = self._wrapper.decrypt(
                wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], _wrap_aad(key_id)
            )
        except InvalidTag:
            raise ConfigurationError(
                f"data key {row.id} does not unwrap under this secret key: was "
                "QUELL_SECRET_KEY (or DATA_DIR/secret.key) changed? Restore the one in use"
            ) from None
        return DataKey(key_id, KeyKind.RANDOM, AESGCM(material))

    # -- rotating ---------------------------------------------------------------------------

    def begin_rotation(self) -> RotationKeys:
        """Make a new active key and set the current one retiring, in one transaction; or,
        when a rotation is unfinished, the keys of that one (to finish it)."""
        if self.db is None:
            raise ConfigurationError("rotating data keys needs the database")
        material = AESGCM.generate_key(bit_length=8 * _KEY_BYTES)
        new = DataKey(os.urandom(KEY_ID_BYTES), KeyKind.RANDOM, AESGCM(material))
        now = self.clock.now()
        try:
            with self.db.write() as conn:
                rows = list(conn.execute(select(secret_keys)))
                retiring = [row for row in rows if row.state == KeyState.RETIRING]
                if retiring:
                    return self._resume(rows, retiring[0])
                if not rows:  # the first rotation: the derived key becomes a row, retiring
                    old = self._derived
                    conn.execute(
                        insert(secret_keys).values(
                            id=old.hex_id, kind=KeyKind.DERIVED, state=KeyState.RETIRING,
                            wrapped=None, created_at=now, retired_at=None,
                        )
                    )  # fmt: skip
                else:
                    active = [row for row in rows if row.state == KeyState.ACTIVE]
                    found = self._key_of(active[0]) if len(active) == 1 else None
                    if found is None:
                        raise ConfigurationError("the secret_keys table has no usable active key")
                    old = found
                    moved = conn.execute(
                        update(secret_keys)
                        .where(secret_keys.c.id == old.hex_id)
                        .where(secret_keys.c.state == KeyState.ACTIVE)
                        .values(state=KeyState.RETIRING)
                    ).rowcount
                    if moved != 1:
                        raise _concurrent()
                nonce = os.urandom(_NONCE_BYTES)
                wrapped = nonce + self._wrapper.encrypt(nonce, material, _wrap_aad(new.id))
                conn.execute(
                    insert(secret_keys).values(
                        id=new.hex_id, kind=KeyKind.RANDOM, state=KeyState.ACTIVE,
                        wrapped=wrapped, created_at=now, retired_at=None,
                    )
                )  # fmt: skip
        except IntegrityError:
            raise _concurrent() from None
        self._known.setdefault(old.id, old)
        self._known[new.id] = new
        return RotationKeys(old=old, new=new, resumed=False)

    def _resume(self, rows: list[Any], retiring: Any) -> RotationKeys:
        active = [row for row in rows if row.state == KeyState.ACTIVE]
        old = self._key_of(retiring)
        new = self._key_of(active[0]) if len(active) == 1 else None
        if old is None or new is None:
            raise ConfigurationError(
                f"the unfinished rotation's keys do not open here (retiring {retiring.id}): "
                "was the secret key changed?"
            )
        self._known.setdefault(old.id, old)
        self._known.setdefault(new.id, new)
        return RotationKeys(old=old, new=new, resumed=True)

    def retire(self, key: DataKey) -> bool:
        """Retire a retiring key: erase its wrapped material; False if it was not retiring."""
        if self.db is None:
            raise ConfigurationError("rotating data keys needs the database")
        with self.db.write() as conn:
            done = conn.execute(
                update(secret_keys)
                .where(secret_keys.c.id == key.hex_id)
                .where(secret_keys.c.state == KeyState.RETIRING)
                .values(state=KeyState.RETIRED, wrapped=None, retired_at=self.clock.now())
            ).rowcount
        with self._lock:
            self._known.pop(key.id, None)
        return bool(done)


def _wrap_aad(key_id: bytes) -> bytes:
    return b"quell data key " + key_id.hex().encode()


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        kind=KeyKind(row.kind),
        state=KeyState(row.state),
        created_at=row.created_at,
        retired_at=row.retired_at,
    )


def _concurrent() -> Conflict:
    return Conflict("another key rotation started meanwhile; run quell secrets rotate-key again")


__all__ = [
    "KEY_ID_BYTES",
    "DataKey",
    "KeyKind",
    "KeyRecord",
    "KeyRing",
    "KeyState",
    "RotationKeys",
    "derived_key",
]
