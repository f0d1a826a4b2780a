"""Signed HTTP intake: HMAC-SHA256 over a timestamp and the body, each signature used once.

A sender that cannot hold an API token (a SIEM webhook, an appliance) signs each request with
its source's secret::

    X-Quell-Timestamp: 1732752000
    X-Quell-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>." + body)>

The timestamp must be within the source's ``signature_window`` (5 minutes by default) of
Quell's clock, and a signature is accepted once: a replay inside the window is refused, and
after the window the timestamp alone refuses it.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from sqlalchemy import delete

from quell.clock import Clock
from quell.durations import parse_duration
from quell.errors import AuthenticationRequired
from quell.ingest.sources import Source
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.dialect import insert_ignore
from quell.store.schema import ingest_nonces

TIMESTAMP_HEADER = "x-quell-timestamp"
SIGNATURE_HEADER = "x-quell-signature"
_SCHEME = "sha256="


def sign(secret: SecretValue, timestamp: int, body: bytes) -> str:
    """The ``X-Quell-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.reveal().encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


class SignatureVerifier:
    """Checks signed requests and remembers the signatures it accepted."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
        self._remember = insert_ignore(db.backend, ingest_nonces, keys=["signature"]).returning(
            ingest_nonces.c.signature
        )

    def verify(
        self,
        source: Source,
        secret: SecretValue,
        timestamp: str | None,
        signature: str | None,
        body: bytes,
    ) -> str:
        """Accept the request (returning its signature digest) or raise AuthenticationRequired.

        The signature is recorded as used at once, so that a replay racing the first request
        is refused; if the request then fails to be ingested, :meth:`forget` releases it, so
        the sender's retry of the same request is accepted.
        """
        if not timestamp or not signature:
            raise AuthenticationRequired(
                "a signed request needs both X-Quell-Timestamp and X-Quell-Signature"
            )
        try:
            sent = int(timestamp.strip())
        except ValueError:
            raise AuthenticationRequired("X-Quell-Timestamp must be Unix seconds") from None
        now = self.clock.now()
        window = parse_duration(source.settings.signature_window)
        try:
            sent_at = datetime.fromtimestamp(sent, UTC)
        except (OverflowError, OSError, ValueError):
            raise AuthenticationRequired("X-Quell-Timestamp is out of range") from None
        if abs(now - sent_at) > window:
            raise AuthenticationRequired(
                f"X-Quell-Timestamp is more than {source.settings.signature_window} "
                "away from the server's clock"
            )
        expected = sign(secret, sent, body)
        if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            raise AuthenticationRequired(f"the signature does not match source {source.name!r}")
        digest = signature.strip().lower().removeprefix(_SCHEME)
        with self.db.write() as conn:
            conn.execute(delete(ingest_nonces).where(ingest_nonces.c.expires_at < now))
            fresh = conn.execute(
                self._remember,
                {"signature": digest, "source": source.name, "expires_at": sent_at + window},
            ).first()
        if fresh is None:
            raise AuthenticationRequired("this signature was already used (a replayed request)")
        return digest

    def forget(self, digest: str) -> None:
        """Release a signature whose request was not ingested (it may be sent again)."""
        with self.db.write() as conn:
            conn.execute(delete(ingest_nonces).where(ingest_nonces.c.signature == digest))
