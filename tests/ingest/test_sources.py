"""Source configuration on both backends: how settings change, and what a removal takes."""

from __future__ import annotations

from quell.correlate.dedup import DEFAULT_FINGERPRINT
from quell.runtime import Runtime

LISTENER = {"host": "127.0.0.1", "udp_port": 5514, "tcp_port": 5515, "batch_latency_ms": 20}


def test_a_connection_setting_changes_alone_and_null_removes_one(runtime: Runtime) -> None:
    """Settings merge as a JSON merge patch two levels deep: giving a listener its new UDP port
    kept its TCP one (it used to replace the whole connection, dropping the TCP listener)."""
    runtime.sources.create("fw", "syslog", "syslog", settings={"connection": LISTENER})
    changed = runtime.sources.update("fw", settings={"connection": {"udp_port": 6514}})
    assert changed.settings.connection == {**LISTENER, "udp_port": 6514}
    dropped = runtime.sources.update("fw", settings={"connection": {"tcp_port": None}})
    assert "tcp_port" not in dropped.settings.connection
    assert dropped.settings.connection["udp_port"] == 6514
    longer = runtime.sources.update("fw", settings={"dedup_window": "2h"})
    assert longer.settings.dedup_window == "2h"
    assert longer.settings.connection["udp_port"] == 6514
    reset = runtime.sources.update("fw", settings={"dedup_window": None, "fingerprint": None})
    assert reset.settings.dedup_window == "1h"
    # a syslog source's own default fingerprint (with the title) comes back, not the generic one
    assert reset.settings.fingerprint == [*DEFAULT_FINGERPRINT, "title"]


def test_a_removed_source_takes_its_checkpoints_and_no_one_elses(runtime: Runtime) -> None:
    """A source added again under the same name starts from its own lookback, not from where
    the removed one had got to."""
    checkpoints = runtime.checkpoints
    runtime.sources.create("siem", "http", "json")
    runtime.sources.create("phish", "http", "email")
    for key in ("http:siem", "http:siem:part", "http:siem-eu", "http:phish:INBOX", "elastic:siem"):
        checkpoints.save(key, {"at": key})
    runtime.sources.remove("siem")
    assert checkpoints.load("http:siem") is None
    assert checkpoints.load("http:siem:part") is None
    for kept in ("http:siem-eu", "http:phish:INBOX", "elastic:siem"):  # other sources' places
        assert checkpoints.load(kept) == {"at": kept}
