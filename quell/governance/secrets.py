"""Secrets at rest: sealed with AES-256-GCM under a data key (:mod:`quell.governance.keyring`).

A sealed value is ``b"q1" + key id (8 bytes) + nonce (12 bytes) + ciphertext-and-tag``. The key
id names the data key that sealed it, so that values sealed before and after a key rotation
both open while ``quell secrets rotate-key`` moves them to the new key. The associated data
binds a ciphertext to its purpose (``"source:siem-hook"``), so a sealed value copied to another
row does not open there.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag

from quell.errors import ConfigurationError
from quell.governance.keyring import KEY_ID_BYTES, DataKey, KeyRing
from quell.sdk.secret import SecretValue

_VERSION = b"q1"
_NONCE_LEN = 12
_HEADER = len(_VERSION) + KEY_ID_BYTES


def key_id_of(sealed: bytes) -> bytes | None:
    """The id of the data key that sealed ``sealed``; None if it is no sealed value."""
    if len(sealed) < _HEADER + _NONCE_LEN + 16 or not sealed.startswith(_VERSION):
        return None
    return sealed[len(_VERSION) : _HEADER]


class SecretBox:
    """Seals secrets under the active data key and opens them under whichever sealed them."""

    def __init__(self, secret_key: SecretValue, ring: KeyRing | None = None) -> None:
        self.ring = ring if ring is not None else KeyRing(secret_key)

    def seal(self, value: SecretValue, *, purpose: str, key: DataKey | None = None) -> bytes:
        """Encrypt ``value`` for storage (under ``key``, else the active data key);
        ``purpose`` must be given again to open it."""
        key = key if key is not None else self.ring.active()
        nonce = os.urandom(_NONCE_LEN)
        sealed = key.aead.encrypt(nonce, value.reveal().encode(), purpose.encode())
        return _VERSION + key.id + nonce + sealed

    def check_key(self) -> None:
        """ConfigurationError unless this process's secret key opens what the database holds:
        the active data key unwraps, and a stored sealed value names a key the ring knows. A
        server or worker started with another key (a second host without the cluster's
        QUELL_SECRET_KEY) would otherwise run, and fail every run that needs a secret."""
        if self.ring.db is None:
            return
        self.ring.active()  # a rotated store: its data key must unwrap
        from sqlalchemy import select

        from quell.store.schema import (
            connector_instances,
            intel_feeds,
            playbook_credentials,
            sources,
        )

        columns = (
            connector_instances.c.secrets, sources.c.secret, intel_feeds.c.secret,
            playbook_credentials.c.secret,
        )  # fmt: skip
        with self.ring.db.read() as conn:  # one sealed value of each kind, if there is one
            found = [
                conn.execute(select(c).where(c.is_not(None)).limit(1)).scalar() for c in columns
            ]
        stored = [bytes(value) for value in found if value is not None]
        for sealed in stored:
            key_id = key_id_of(sealed)
            if key_id is not None and self.ring.find(key_id) is None:
                record = self.ring.describe(key_id)
                if record is not None and record.retired_at is not None:
                    continue  # sealed before a rotation that retired its key: said when opened
                raise ConfigurationError(
                    "this database's secrets were sealed under another secret key: every "
                    "`quell serve` and `quell worker` of one database needs the same "
                    "QUELL_SECRET_KEY (or DATA_DIR/secret.key)"
                )

    def open(self, sealed: bytes, *, purpose: str) -> SecretValue:
        """Decrypt a value sealed for ``purpose``; ConfigurationError if it cannot be."""
        key_id = key_id_of(sealed)
        if key_id is None:
            raise ConfigurationError(f"the stored secret for {purpose} is not a sealed value")
        key = self.ring.find(key_id)
        if key is None:
            record = self.ring.describe(key_id)
            if record is not None and record.retired_at is not None:
                raise ConfigurationError(
                    f"the stored secret for {purpose} was sealed with data key {record.id}, "
                    f"retired on {record.retired_at:%Y-%m-%d}; set the secret again"
                )
            raise ConfigurationError(
                f"the stored secret for {purpose} was sealed with another secret key; "
                "restore the key it was sealed with or set the secret again"
            )
        nonce = sealed[_HEADER : _HEADER + _NONCE_LEN]
        try:
            plain = key.aead.decrypt(nonce, sealed[_HEADER + _NONCE_LEN :], purpose.encode())
        except InvalidTag:
            raise ConfigurationError(
                f"the stored secret for {purpose} does not authenticate (altered or moved)"
            ) from None
        return SecretValue(plain.decode())


__all__ = ["SecretBox", "key_id_of"]
