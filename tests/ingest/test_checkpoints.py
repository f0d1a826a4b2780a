"""Checkpoints on both backends."""

from __future__ import annotations

from quell.clock import ManualClock
from quell.ingest.checkpoints import DbCheckpointStore
from quell.store.database import Database


def test_a_cursor_is_saved_replaced_and_read_back(database: Database, clock: ManualClock) -> None:
    store = DbCheckpointStore(database, clock)
    assert store.load("imap:phish:INBOX") is None
    store.save("imap:phish:INBOX", {"uidvalidity": 7, "last_uid": 41})
    store.save("imap:phish:INBOX", {"uidvalidity": 7, "last_uid": 42, "note": "ü"})
    store.save("elastic:siem", {"search_after": [1721227225000, "abc"]})
    again = DbCheckpointStore(database, clock)
    assert again.load("imap:phish:INBOX") == {"uidvalidity": 7, "last_uid": 42, "note": "ü"}
    assert again.load("elastic:siem") == {"search_after": [1721227225000, "abc"]}
