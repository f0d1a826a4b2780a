"""Fingerprints: what makes two alerts the same alert.

The default rule is the source, the detection rule and the key observables; a repeat of the
same fingerprint within the source's window raises ``count`` and ``last_seen`` on the alert
already stored instead of adding a row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from quell.correlate.fields import Getter, getter
from quell.ingest.model import Alert

DEFAULT_FINGERPRINT = (
    "rule",
    "src.ip",
    "dst.ip",
    "dst.port",
    "host",
    "user",
    "file.hash",
    "url",
    "email.message_id",
)

_SEPARATOR = "\x1f"


class Fingerprinter:
    """Computes fingerprints by a list of field names."""

    def __init__(self, fields: Sequence[str] = DEFAULT_FINGERPRINT) -> None:
        if not fields:
            raise ValueError("a fingerprint needs at least one field")
        self.fields = tuple(fields)
        self._getters: tuple[Getter, ...] = tuple(
            getter(name, field="fingerprint") for name in fields
        )

    def __call__(self, alert: Alert) -> str:
        """32 hex characters identifying ``alert`` within its source."""
        parts = [alert.source]
        for get in self._getters:
            value = get(alert)
            parts.append("" if value is None else str(value))
        digest = hashlib.blake2b(_SEPARATOR.join(parts).encode(), digest_size=16)
        return digest.hexdigest()
