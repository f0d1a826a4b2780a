"""Secrets at rest: sealed with AES-256-GCM under a key derived from the secret key.

A sealed value is ``b"q1" + key id (8 bytes) + nonce (12 bytes) + ciphertext-and-tag``. The key
id (the first bytes of a hash of the derived key) lets a later key rotation tell which key
sealed a value. The associated data binds a ciphertext to its purpose (``"source:siem-hook"``),
so a sealed value copied to another row does not open there.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from quell.errors import ConfigurationError
from quell.sdk.secret import SecretValue

_VERSION = b"q1"
_KEY_ID_LEN = 8
_NONCE_LEN = 12


class SecretBox:
    """Seals and opens secrets with a key derived from Quell's secret key."""

    def __init__(self, secret_key: SecretValue) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"quell secrets at rest v1"
        ).derive(secret_key.reveal().encode())
        self._aead = AESGCM(derived)
        self.key_id = hashlib.sha256(derived).digest()[:_KEY_ID_LEN]

    def seal(self, value: SecretValue, *, purpose: str) -> bytes:
        """Encrypt ``value`` for storage; ``purpose`` must be given again to open it."""
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._aead.encrypt(nonce, value.reveal().encode(), purpose.encode())
        return _VERSION + self.key_id + nonce + sealed

    def open(self, sealed: bytes, *, purpose: str) -> SecretValue:
        """Decrypt a value sealed for ``purpose``; ConfigurationError if it cannot be."""
        header = len(_VERSION) + _KEY_ID_LEN
        if len(sealed) < header + _NONCE_LEN + 16 or not sealed.startswith(_VERSION):
            raise ConfigurationError(f"the stored secret for {purpose} is not a sealed value")
        if sealed[len(_VERSION) : header] != self.key_id:
            raise ConfigurationError(
                f"the stored secret for {purpose} was sealed with another secret key; "
                "restore the key it was sealed with or set the secret again"
            )
        nonce = sealed[header : header + _NONCE_LEN]
        try:
            plain = self._aead.decrypt(nonce, sealed[header + _NONCE_LEN :], purpose.encode())
        except InvalidTag:
            raise ConfigurationError(
                f"the stored secret for {purpose} does not authenticate (altered or moved)"
            ) from None
        return SecretValue(plain.decode())
