"""How sources hand records to the pipeline, and keep their place.

A source (the HTTP intake, a file, the syslog listener, the IMAP poller, a SIEM puller) cuts
its input into *records* (one JSON document or line, one syslog message, one e-mail) and
submits them by source name. ``submit`` returns once the batch is durable: every record is
stored, deduplicated, suppressed or dead-lettered, and the counts say which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What became of a batch.

    ``received == stored + deduplicated + suppressed + dead_lettered``, always.
    """

    received: int = 0
    stored: int = 0
    deduplicated: int = 0
    suppressed: int = 0
    dead_lettered: int = 0

    def __add__(self, other: IntakeResult) -> IntakeResult:
        return IntakeResult(
            received=self.received + other.received,
            stored=self.stored + other.stored,
            deduplicated=self.deduplicated + other.deduplicated,
            suppressed=self.suppressed + other.suppressed,
            dead_lettered=self.dead_lettered + other.dead_lettered,
        )

    def as_dict(self) -> dict[str, int]:
        """The counts, for JSON output."""
        return {
            "received": self.received,
            "stored": self.stored,
            "deduplicated": self.deduplicated,
            "suppressed": self.suppressed,
            "dead_lettered": self.dead_lettered,
        }


class IntakeSink(Protocol):
    """Where sources submit records."""

    async def submit(self, source: str, records: Sequence[bytes]) -> IntakeResult:
        """Ingest ``records`` (each the verbatim bytes of one record) for ``source``."""
        ...


class CheckpointStore(Protocol):
    """Durable cursors for pulling sources (last IMAP UID, last search_after key, ...)."""

    def load(self, key: str) -> dict[str, Any] | None:
        """The cursor saved under ``key``, or None."""
        ...

    def save(self, key: str, cursor: dict[str, Any]) -> None:
        """Replace the cursor under ``key`` (commits before returning)."""
        ...
