"""Exporting the audit trail: JSON Lines whose chain checks again from the file (CLI and API),
and CEF over syslog, sent over real UDP, TCP and TLS sockets into Quell's own syslog listener,
pipeline and CEF parser, with hostile values escaped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from quell import __version__
from quell.cli import cli
from quell.clock import ManualClock
from quell.governance.audit import GENESIS, AuditEvent, verify_exported
from quell.governance.audit_export import (
    Protocol,
    SyslogSender,
    SyslogTarget,
    cef_severity,
    send_events,
    tls_context,
    to_cef,
    to_syslog,
)
from quell.governance.permissions import Role
from quell.ingest.model import Alert
from quell.ingest.parsers.cef import CefParser
from quell.ingest.service import IngestService
from quell.ingest.syslog import SyslogListener, SyslogListenerConfig
from quell.runtime import Runtime
from tests.cli.processes import quell_command
from tests.fixtures.servers import LiveServer
from tests.ingest.test_syslog_listener import _self_signed

TIMEOUT = 20.0
HOSTILE = {
    "note": "pipe | equals = backslash \\ newline \n carriage \r end",
    "forged": "x cs3=forged suser=mallory act=nothing",
    "k=v|": ["nested", {"deep": "\\="}],
    "unicode": "Ünïcødé ✓",
}


def _record_events(runtime: Runtime, clock: ManualClock) -> list[AuditEvent]:
    """A few events an hour apart, one with hostile values everywhere."""
    log = runtime.audit
    events = [log.record("alice", "guardrail.kill_switch_on", None, {"reason": "drill"})]
    clock.advance(timedelta(hours=1))
    events.append(log.record("bob", "connector.create", "edge-fw", {"connector": "nftables"}))
    clock.advance(timedelta(hours=1))
    events.append(log.record("eve|x=y\nz", "test.hostile", "sub|ject=1\\2\nline", HOSTILE))
    clock.advance(timedelta(hours=1))
    events.append(log.record("carol", "user.login_failed", "carol", {"client": "10.0.0.9"}))
    return events


def _cli(runtime: Runtime, tmp_path: Path, *args: str) -> Result:
    env = {
        "QUELL_DATABASE_URL": runtime.settings.resolved_database_url,
        "QUELL_DATA_DIR": str(tmp_path / "data"),
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


# -- JSON Lines ----------------------------------------------------------------------------------


def test_json_lines_round_trip_and_the_chain_checks_again_from_the_file(
    runtime: Runtime, clock: ManualClock, tmp_path: Path
) -> None:
    events = _record_events(runtime, clock)
    whole = tmp_path / "audit.jsonl"
    result = _cli(runtime, tmp_path, "audit", "export", "--output", str(whole))
    assert result.exit_code == 0, result.output
    assert f"exported 4 event(s); last seq {events[-1].seq}" in result.stderr
    exported = _lines(whole)
    assert exported == [json.loads(orjson.dumps(event.as_dict())) for event in events]
    assert exported[2]["detail"] == HOSTILE
    assert exported[0]["prev_hash"] == GENESIS
    assert verify_exported(exported) == (4, None)
    assert verify_exported(exported, prev_hash=GENESIS) == (4, None)
    assert whole.stat().st_mode & 0o077 == 0

    checked = _cli(runtime, tmp_path, "audit", "verify", "--file", str(whole))
    assert checked.exit_code == 0
    assert "export intact: 4 event(s) checked (it starts at the first event)" in checked.output

    # Only what is new since a seq, or since a time; a partial export checks from its anchor.
    later = tmp_path / "later.jsonl"
    since = _cli(
        runtime, tmp_path, "audit", "export", "--since", str(events[1].seq), "-o", str(later)
    )
    assert since.exit_code == 0
    assert [line["seq"] for line in _lines(later)] == [events[2].seq, events[3].seq]
    assert verify_exported(_lines(later), prev_hash=events[1].hash) == (2, None)
    assert (
        "(it starts at mid-trail)"
        in _cli(runtime, tmp_path, "audit", "verify", "--file", str(later)).output
    )
    after = (events[1].at + timedelta(minutes=30)).isoformat()
    by_time = _cli(runtime, tmp_path, "audit", "export", "--after", after)
    assert [json.loads(line)["id"] for line in by_time.stdout.splitlines()] == [
        events[2].id,
        events[3].id,
    ]

    # Past the end: nothing, said so (it named a last seq that does not exist).
    beyond = _cli(runtime, tmp_path, "audit", "export", "--since", "1041", "-o", str(later))
    assert beyond.exit_code == 0
    assert "exported 0 events: none after seq 1041" in beyond.stderr
    # An empty file proves nothing; a line that is not JSON is an error, not a traceback.
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    nothing = _cli(runtime, tmp_path, "audit", "verify", "--file", str(empty))
    assert (nothing.exit_code, nothing.stderr) == (
        1, "error: the file holds no events: nothing to verify\n",
    )  # fmt: skip
    empty.write_bytes(b"[1, 2]\n")
    assert _cli(runtime, tmp_path, "audit", "verify", "--file", str(empty)).stderr == (
        "error: line 1 is not a JSON object\n"
    )
    # TLS options without TLS were ignored silently.
    plain = _cli(runtime, tmp_path, "audit", "export", "--syslog", "127.0.0.1:9",
                 "--protocol", "udp", "--tls-ca", str(whole))  # fmt: skip
    assert plain.exit_code == 2
    assert "--tls-ca, --tls-cert and --tls-key are for --protocol tls" in plain.stderr

    # Any change to an exported line is found, and named by its seq.
    tampered = exported.copy()
    tampered[2] = {**tampered[2], "detail": {**HOSTILE, "note": "nothing to see"}}
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in tampered))
    assert verify_exported(tampered) == (2, events[2].seq)
    refused = _cli(runtime, tmp_path, "audit", "verify", "--file", str(broken))
    assert refused.exit_code == 1
    assert f"export BROKEN at event {events[2].seq} (after 2 good ones)" in refused.stderr
    dropped = [line for line in exported if line["seq"] != events[1].seq]
    assert verify_exported(dropped) == (1, events[2].seq)


def test_the_api_streams_the_same_json_lines(
    runtime: Runtime,
    clock: ManualClock,
    live_server: LiveServer,
    role_tokens: dict[Role, str],
    tmp_path: Path,
) -> None:
    events = _record_events(runtime, clock)
    expected = [json.loads(orjson.dumps(event.as_dict())) for event in runtime.audit.list_all()]
    expected.reverse()  # oldest first; tokens made by the fixture are not audited
    with live_server.client(role_tokens[Role.AUDITOR]) as client:
        with client.stream("GET", "/api/audit/export") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            streamed = [json.loads(line) for line in response.iter_lines() if line]
        assert streamed == expected
        assert verify_exported(streamed) == (len(expected), None)
        newer = client.get("/api/audit/export", params={"since": events[2].seq})
        assert [json.loads(line)["id"] for line in newer.text.splitlines()] == [events[3].id]
        after = client.get("/api/audit/export", params={"after": events[2].at.isoformat()})
        assert [json.loads(line)["id"] for line in after.text.splitlines()] == [events[3].id]


# -- CEF -----------------------------------------------------------------------------------------


def _parsed(line: str) -> Alert:
    result = CefParser().parse(line)
    assert isinstance(result, Alert)
    return result


def _check_alert(alert: Alert, event: AuditEvent) -> None:
    """Every field of the event, as Quell's CEF parser reads it back."""
    assert alert.rule_uid == event.action
    expected_title = (f"{event.action} {event.subject}" if event.subject else event.action).replace(
        "\n", " "
    )
    assert alert.title == expected_title
    assert alert.user == event.actor
    assert alert.uid == event.id
    assert alert.category == event.action.split(".")[0]
    assert alert.time == event.at.replace(microsecond=event.at.microsecond // 1000 * 1000)
    assert alert.vendor == "Quell"
    assert alert.product == "Quell"
    assert alert.extra["device_version"] == __version__
    assert alert.extra["cef_severity"] == str(cef_severity(event.action))
    assert alert.extra["extension"]["act"] == event.action
    custom = alert.extra["custom"]
    assert custom["seq"] == str(event.seq)
    assert custom.get("subject") == event.subject
    assert json.loads(custom["detail"]) == event.detail
    assert custom["hash"] == event.hash
    assert custom["prev_hash"] == event.prev_hash


def test_cef_escapes_hostile_values_and_reads_back_exactly(
    runtime: Runtime, clock: ManualClock
) -> None:
    events = _record_events(runtime, clock)
    hostile = events[2]
    line = to_cef(hostile)
    assert "\n" not in line
    assert "\r" not in line
    header, _, _ = line.partition("|rt=")
    assert header.split("|")[:5] == ["CEF:0", "Quell", "Quell", __version__, "test.hostile"]
    assert "sub\\|ject=1\\\\2 line" in header  # a header field: | and \ escaped, no break
    assert "suser=eve|x\\=y\\nz " in line  # an extension value: = and the break escaped
    alert = _parsed(line)
    _check_alert(alert, hostile)
    assert "mallory" not in (alert.user or "")
    assert json.loads(alert.extra["custom"]["detail"])["forged"] == HOSTILE["forged"]
    for event in events:
        _check_alert(_parsed(to_cef(event)), event)
    assert cef_severity("guardrail.kill_switch_on") == 8
    assert cef_severity("user.login_failed") == 6
    assert cef_severity("connector.create") == 3

    message = to_syslog(hostile, hostname="quell-01").decode()
    stamp = f"{hostile.at:%Y-%m-%dT%H:%M:%S.%f}Z"
    assert message.startswith(f"<110>1 {stamp} quell-01 quell - audit - CEF:0|")  # 13*8 + info
    _check_alert(_parsed(message), hostile)


# -- syslog over real sockets into Quell's own listener and pipeline -----------------------------


def _loop_source(runtime: Runtime) -> None:
    """A syslog source reading CEF: what a SIEM receiving Quell's export would be."""
    runtime.sources.create(
        "siem",
        "syslog",
        "cef",
        settings={
            "fingerprint": ["title", "user"],
            "correlate_on": ["host"],
            "connection": {"udp_port": 0},  # the tests start the listener themselves
        },
    )


def _received(runtime: Runtime) -> dict[str, Alert]:
    alerts = runtime.alerts.list_all(source="siem", limit=1000)
    return {alert.uid or "": runtime.alerts.get(alert.id) for alert in alerts}


async def _listening(runtime: Runtime, **config: Any) -> SyslogListener:
    listener = SyslogListener(
        "siem",
        SyslogListenerConfig(batch_latency_ms=5, **config),
        IngestService(runtime.pipeline),
    )
    await listener.start()
    return listener


async def _until(listener: SyslogListener, count: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        await listener.wait_until(lambda c: c.submitted >= count)


@pytest.mark.parametrize("protocol", list(Protocol), ids=[p.value for p in Protocol])
def test_cef_over_syslog_lands_in_quells_own_listener_as_alerts(
    runtime: Runtime, clock: ManualClock, tmp_path: Path, protocol: Protocol
) -> None:
    events = _record_events(runtime, clock)
    _loop_source(runtime)
    cert, key = _self_signed(tmp_path)
    config: dict[str, Any] = {
        Protocol.UDP: {"udp_port": 0},
        Protocol.TCP: {"tcp_port": 0},
        Protocol.TLS: {"tls_port": 0, "tls_cert": cert, "tls_key": key},
    }[protocol]

    async def scenario() -> None:
        listener = await _listening(runtime, **config)
        try:
            address = {
                Protocol.UDP: listener.udp_address,
                Protocol.TCP: listener.tcp_address,
                Protocol.TLS: listener.tls_address,
            }[protocol]
            assert address is not None
            target = SyslogTarget(*address)
            context = tls_context(cert) if protocol is Protocol.TLS else None

            def send() -> tuple[int, int | None]:
                with SyslogSender(target, protocol, context=context) as sender:
                    return send_events(events, sender, hostname="quell-test")

            assert await asyncio.to_thread(send) == (len(events), events[-1].seq)
            await _until(listener, len(events))
        finally:
            await listener.stop()
        assert listener.counters.truncated == 0

    asyncio.run(scenario())
    received = _received(runtime)
    assert set(received) == {event.id for event in events}
    for event in events:
        alert = received[event.id]
        _check_alert(alert, event)
        assert alert.raw == to_syslog(event, hostname="quell-test")  # one message, unframed
        header = alert.extra["syslog"]
        assert header["hostname"] == "quell-test"
        assert header["app_name"] == "quell"
        assert header["msgid"] == "audit"
        assert header["facility"] == 13
    assert received[events[0].id].severity.name == "HIGH"  # CEF 8: the kill switch


def test_the_cli_streams_new_events_over_tcp_with_follow_until_interrupted(
    runtime: Runtime, clock: ManualClock, tmp_path: Path
) -> None:
    events = _record_events(runtime, clock)
    _loop_source(runtime)
    env = {
        **os.environ,
        "QUELL_DATABASE_URL": runtime.settings.resolved_database_url,
        "QUELL_DATA_DIR": str(tmp_path / "data"),
    }

    async def scenario() -> tuple[int, str]:
        listener = await _listening(runtime, tcp_port=0)
        try:
            assert listener.tcp_address is not None
            host, port = listener.tcp_address
            process = await asyncio.create_subprocess_exec(
                *quell_command(),
                "audit", "export", "--syslog", f"{host}:{port}", "--protocol", "tcp",
                "--since", str(events[0].seq), "--follow", "--interval", "0.1",
                "--hostname", "quell-follow",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                await _until(listener, len(events) - 1)  # all but the first (--since)
                late = await asyncio.to_thread(
                    runtime.audit.record, "dave", "intel.import", "late-feed", {"count": 3}
                )
                events.append(late)
                await _until(listener, len(events) - 1)
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGINT)
                async with asyncio.timeout(TIMEOUT):
                    _, stderr = await process.communicate()
        finally:
            await listener.stop()
        assert process.returncode is not None
        return process.returncode, stderr.decode()

    code, stderr = asyncio.run(scenario())
    assert code == 0, stderr
    assert f"exported {len(events) - 1} event(s); last seq {events[-1].seq}" in stderr
    received = _received(runtime)
    assert set(received) == {event.id for event in events[1:]}
    for event in events[1:]:
        _check_alert(received[event.id], event)
        assert received[event.id].extra["syslog"]["hostname"] == "quell-follow"


def test_an_unreachable_receiver_or_a_bad_target_is_a_clear_error(
    runtime: Runtime, tmp_path: Path
) -> None:
    runtime.audit.record("alice", "connector.create", "x", {})
    for target in ("nohost", "host:0", "host:99999", ":514"):
        result = _cli(runtime, tmp_path, "audit", "export", "--syslog", target)
        assert result.exit_code == 1
        assert "a syslog target is HOST:PORT" in result.stderr
    closed = _free_port()
    refused = _cli(runtime, tmp_path, "audit", "export", "--syslog", f"127.0.0.1:{closed}")
    assert refused.exit_code == 1
    assert f"cannot reach the syslog receiver 127.0.0.1:{closed} over tcp" in refused.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
