"""Long-running sources through the runner and the real pipeline, on both backends.

The runner starts each source as ``quell serve`` does; records travel over real sockets (a
syslog client, a local Elasticsearch) into the same intake the HTTP route uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import pytest

from quell.ingest import runner as runner_module
from quell.ingest.intake import IntakeResult
from quell.ingest.runner import SourceRunner
from quell.ingest.service import IngestService
from quell.runtime import Runtime
from tests.fixtures.requirements import corpus_path
from tests.fixtures.servers import start_server
from tests.ingest.dovecot import ImapAccount
from tests.ingest.fake_elastic import API_KEY, FakeElastic, elastic_app

CEF = (
    "<134>1 2026-03-01T12:00:00Z fw01 asa - - - CEF:0|Acme|Firewall|1.0|100|Blocked SMB|7|"
    "src=203.0.113.5 dst=10.0.0.8 dpt=445 act=blocked"
)
LEEF = (
    "<13>Mar  1 12:00:06 qradar LEEF:1.0|IBM|QRadar|1.0|Login Failed|"
    "src=192.0.2.5\tdst=10.0.0.9\tusrName=alice\tsev=5"
)
PLAIN = "<38>Mar  1 12:00:05 web01 sshd[123]: Failed password for root from 198.51.100.7 port 22"


class NotifyingIntake(IngestService):
    """The real intake, which also says when a batch has landed."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime.pipeline)
        self.landed = asyncio.Event()

    async def submit(self, source: str, records: Sequence[bytes]) -> IntakeResult:
        try:
            return await super().submit(source, records)
        finally:
            self.landed.set()


async def _until(
    intake: NotifyingIntake, check: Callable[[], Awaitable[bool]], seconds: float = 20
) -> None:
    """Wait (bounded) until ``check`` holds, re-checking after each landed batch."""
    async with asyncio.timeout(seconds):
        while not await check():
            intake.landed.clear()
            await intake.landed.wait()


def test_a_syslog_source_stores_cef_leef_and_plain_messages_and_dead_letters_a_100kb_line(
    runtime: Runtime,
) -> None:
    runtime.sources.create(
        "fw",
        "syslog",
        "syslog",
        settings={
            "connection": {"udp_port": 0, "tcp_port": 0, "batch_latency_ms": 5},
            "correlate_on": ["src_ip"],
        },
    )

    async def scenario() -> None:
        runner = SourceRunner(runtime, IngestService(runtime.pipeline))
        await runner.start()
        assert runner.failed == {}
        listener = runner.running["fw"].detail
        try:
            tcp = socket.create_connection(listener.tcp_address)
            framed = CEF.encode()
            tcp.sendall(b"%d " % len(framed) + framed)  # octet counting
            tcp.sendall(LEEF.encode() + b"\n")  # newline framing, same connection
            tcp.sendall(b"<14>Mar  1 12:00:07 big app: " + b"x" * 100_000 + b"\n")
            tcp.close()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.sendto(PLAIN.encode(), listener.udp_address)
            udp.close()
            async with asyncio.timeout(20):
                await listener.wait_until(lambda c: c.submitted >= 4)
        finally:
            await runner.stop()

    asyncio.run(scenario())
    source = runtime.sources.get("fw")
    assert source.counters.received == 4
    assert (source.counters.stored, source.counters.dead_lettered) == (3, 1)
    titles = {alert.title for alert in runtime.alerts.list_all(source="fw")}
    assert "Blocked SMB" in titles
    assert any(title.startswith("Login Failed") for title in titles)
    assert any(title.startswith("sshd") for title in titles)
    cef = next(a for a in runtime.alerts.list_all(source="fw") if a.title == "Blocked SMB")
    assert cef.src is not None
    assert cef.src.ip == "203.0.113.5"
    assert cef.raw == CEF.encode()
    (letter,) = runtime.dead_letters.list_all(source="fw")
    assert "exceeds the source's limit" in letter.reason
    assert len(letter.raw) > 100_000


@pytest.fixture(scope="module")
def elastic() -> Iterator[FakeElastic]:
    fake = FakeElastic()
    server = start_server(elastic_app(fake))  # type: ignore[arg-type]
    fake.url = server.url
    yield fake
    server.stop()


def test_an_elastic_source_pulls_alerts_into_the_pipeline_once(
    runtime: Runtime, elastic: FakeElastic
) -> None:
    with elastic.lock:
        elastic.reset()
    now = runtime.clock.now()
    for number in range(120):
        elastic.add(
            "alerts-a",
            f"id-{number}",
            {
                "@timestamp": (now - timedelta(minutes=50) + timedelta(seconds=number)).isoformat(),
                "event": {"id": f"ev-{number}", "kind": "alert"},
                "rule": {"name": f"Suspicious thing {number % 7}"},
                "source": {"ip": f"198.51.100.{number % 50}"},
            },
        )
    connection: dict[str, Any] = {
        "url": elastic.url,
        "index": "alerts-*",
        "query": {"term": {"event.kind": "alert"}},
        "auth": "api_key",
        "page_size": 25,
        "lookback": "2h",
        "delay": "1s",
        "poll_interval": "1h",
    }
    runtime.sources.create(
        "siem", "elastic", "ecs", settings={"connection": connection}, secret=_secret(API_KEY)
    )

    async def scenario() -> None:
        intake = NotifyingIntake(runtime)
        runner = SourceRunner(runtime, intake)
        await runner.start()
        assert runner.failed == {}

        async def all_in() -> bool:
            return (await asyncio.to_thread(runtime.sources.get, "siem")).counters.received >= 120

        try:
            await _until(intake, all_in)
        finally:
            await runner.stop()

    asyncio.run(scenario())
    counters = runtime.sources.get("siem").counters
    assert counters.received == 120
    assert counters.stored + counters.deduplicated == 120
    assert counters.dead_lettered == 0
    assert runtime.checkpoints.load("elastic:siem") is not None
    # A second run finds nothing new: the checkpoint holds.
    asyncio.run(_one_more_run(runtime))
    assert runtime.sources.get("siem").counters.received == 120


async def _one_more_run(runtime: Runtime) -> None:
    runner = SourceRunner(runtime, IngestService(runtime.pipeline))
    await runner.start()
    await asyncio.sleep(0)
    await runner.stop()


def test_a_source_with_bad_credentials_is_reported_and_others_still_run(
    runtime: Runtime, elastic: FakeElastic
) -> None:
    runtime.sources.create(
        "bad-siem",
        "elastic",
        "ecs",
        settings={"connection": {"url": elastic.url, "index": "x", "auth": "api_key"}},
        secret=_secret("d3Jvbmc6a2V5"),
    )
    runtime.sources.create("fw", "syslog", "syslog", settings={"connection": {"udp_port": 0}})

    async def scenario() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        runner = SourceRunner(runtime, IngestService(runtime.pipeline))
        await runner.start()
        try:
            task = runner.running["bad-siem"].task
            async with asyncio.timeout(20):
                await asyncio.wait({task})  # a fatal error ends the source's task
            assert "fw" in runner.running
            return dict(runner.failed), runner.status("bad-siem"), runner.status("fw")
        finally:
            await runner.stop()

    failed, bad, good = asyncio.run(scenario())
    assert "d3Jvbmc6a2V5" not in failed["bad-siem"]
    assert bad["state"] == "failed"
    assert bad["reason"] == failed["bad-siem"]
    assert good == {"state": "running"}


def _secret(value: str) -> Any:
    from quell.sdk.secret import SecretValue

    return SecretValue(value)


@pytest.mark.requires("dovecot", "corpus")
def test_an_imap_source_turns_reported_phish_into_alerts(
    runtime: Runtime, imap_account: ImapAccount
) -> None:
    corpus = corpus_path() / "phishing"
    for name in ("sample-1.eml", "sample-200.eml"):
        imap_account.append((corpus / name).read_bytes())
    imap_account.append(b"Subject: not a mail at all\r\n")  # no Date, no Received: refused
    connection = {
        "host": imap_account.server.host,
        "port": imap_account.server.port,
        "security": "none",
        "username": imap_account.username,
        "processed_folder": "Processed",
        "poll_interval": 3600,
    }
    runtime.sources.create(
        "phish",
        "imap",
        "email",
        settings={"connection": connection},
        secret=_secret(imap_account.password),
    )

    async def scenario() -> None:
        intake = NotifyingIntake(runtime)
        runner = SourceRunner(runtime, intake)
        await runner.start()
        assert runner.failed == {}

        async def all_in() -> bool:
            return (await asyncio.to_thread(runtime.sources.get, "phish")).counters.received >= 3

        try:
            await _until(intake, all_in)
        finally:
            await runner.stop()

    asyncio.run(scenario())
    counters = runtime.sources.get("phish").counters
    assert (counters.received, counters.stored, counters.dead_lettered) == (3, 2, 1)
    phish = runtime.alerts.list_all(source="phish")
    assert all(alert.email is not None and alert.email.sender for alert in phish)
    assert all(
        alert.title.startswith(("Reported phishing", "Suspicious e-mail")) for alert in phish
    )
    assert imap_account.uids("INBOX") == []
    assert len(imap_account.uids("Processed")) == 3


def test_sources_added_changed_disabled_or_removed_while_serving_are_followed(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source added while ``quell serve`` ran stayed stopped until the server restarted. The
    runner now follows the configuration: it starts what is added or enabled, restarts what
    changed (a failed source too, once its configuration changes), stops what is disabled or
    removed."""
    connection = {"udp_port": 0, "tcp_port": 0, "batch_latency_ms": 5}

    async def scenario() -> None:
        runner = SourceRunner(runtime, IngestService(runtime.pipeline))
        await runner.start()
        try:
            assert runner.running == {}
            await asyncio.to_thread(
                runtime.sources.create, "fw", "syslog", "syslog",
                settings={"connection": connection},
            )  # fmt: skip
            await runner.reconcile()
            assert runner.status("fw") == {"state": "running"}
            first = runner.running["fw"].detail
            await runner.reconcile()  # nothing changed: the same listener
            assert runner.running["fw"].detail is first

            await asyncio.to_thread(
                runtime.sources.update, "fw",
                settings={"connection": {**connection, "batch_latency_ms": 7}},
            )  # fmt: skip
            await runner.reconcile()
            second = runner.running["fw"].detail
            assert second is not first  # started again with the new settings
            assert second.config.batch_latency_ms == 7

            # A source that cannot start is failed, and not retried until it changes.
            bad = {"udp_port": second.udp_address[1], "tcp_port": 0}  # a port in use
            await asyncio.to_thread(
                runtime.sources.create, "fw2", "syslog", "syslog", settings={"connection": bad}
            )
            await runner.reconcile()
            assert runner.status("fw2")["state"] == "failed"
            await runner.reconcile()  # unchanged, and failed a moment ago: left alone
            assert runner.status("fw2")["state"] == "failed"
            await asyncio.to_thread(
                runtime.sources.update, "fw2", settings={"connection": connection}
            )
            await runner.reconcile()
            assert runner.status("fw2") == {"state": "running"}

            # A source that could not start is tried again a while later, unchanged: the
            # port it wanted may have been freed since (here: fw3 wants fw2's, then fw2 goes).
            taken = {"udp_port": runner.running["fw2"].detail.udp_address[1]}
            await asyncio.to_thread(
                runtime.sources.create, "fw3", "syslog", "syslog", settings={"connection": taken}
            )
            await runner.reconcile()
            assert runner.status("fw3")["state"] == "failed"
            await asyncio.to_thread(runtime.sources.update, "fw2", enabled=False)
            await runner.reconcile()  # fw2 stops; fw3 failed too recently to be tried again
            assert runner.status("fw3")["state"] == "failed"
            monkeypatch.setattr(runner_module, "RETRY_START_AFTER", 0.0)
            await runner.reconcile()
            assert runner.status("fw3") == {"state": "running"}
            await asyncio.to_thread(runtime.sources.update, "fw2", enabled=True)
            await asyncio.to_thread(runtime.sources.remove, "fw3")
            await runner.reconcile()
            assert runner.status("fw2") == {"state": "running"}

            tasks = [runner.running[name].task for name in ("fw", "fw2")]
            await asyncio.to_thread(runtime.sources.update, "fw", enabled=False)
            await asyncio.to_thread(runtime.sources.remove, "fw2")
            await runner.reconcile()
            assert runner.status("fw") == {"state": "stopped"}
            assert runner.status("fw2") == {"state": "stopped"}
            assert runner.running == {}
            assert all(task.done() for task in tasks)
        finally:
            await runner.stop()

    asyncio.run(scenario())


def test_a_source_whose_polls_keep_failing_says_so_while_it_retries(runtime: Runtime) -> None:
    """An IMAP source whose server cannot be reached showed ``running`` while every poll
    failed; it now shows ``retrying``, with how many failed in a row and why (never the
    password). A free loopback port stands for the unreachable server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: a connection is refused at once
    runtime.sources.create(
        "phish", "imap", "email",
        settings={"connection": {"host": "127.0.0.1", "port": port, "security": "none",
                                 "username": "soc", "backoff_initial": 0.05,
                                 "backoff_max": 0.05, "connect_timeout": 2}},
        secret=_secret("canary-imap-password"),
    )  # fmt: skip

    async def scenario() -> dict[str, Any]:
        runner = SourceRunner(runtime, IngestService(runtime.pipeline))
        await runner.start()
        try:
            async with asyncio.timeout(20):  # polled: the runner has no event to wait on
                while True:
                    status = runner.status("phish")
                    if status["state"] == "retrying" and status["failures"] >= 2:
                        return status
                    await asyncio.sleep(0.02)
        finally:
            await runner.stop()

    status = asyncio.run(scenario())
    assert status["failures"] >= 2
    assert "refused" in status["reason"].lower(), status
    assert "canary" not in str(status)


def test_an_elastic_source_with_a_sealed_credential_can_have_its_settings_changed(
    runtime: Runtime,
) -> None:
    """The credential lives in the sealed secret, never in the settings; changing the index
    (or any other setting) of such a source must not ask for it again."""
    base = {"url": "http://127.0.0.1:9200", "index": "alerts-*"}
    runtime.sources.create(
        "siem-key",
        "elastic",
        "ecs",
        settings={"connection": {**base, "auth": "api_key"}},
        secret=_secret(API_KEY),
    )
    runtime.sources.create(
        "siem-basic",
        "elastic",
        "ecs",
        settings={"connection": {**base, "auth": "basic", "username": "reader"}},
        secret=_secret("canary-password"),
    )
    for name, auth in (
        ("siem-key", {"auth": "api_key"}),
        ("siem-basic", {"auth": "basic", "username": "reader"}),
    ):
        changed = runtime.sources.update(
            name, settings={"connection": {**base, **auth, "index": "logs-*"}}
        )
        assert changed.settings.connection["index"] == "logs-*"
        assert (
            runtime.sources.update(name, settings={"dedup_window": "2h"}).settings.dedup_window
            == "2h"
        )
    assert "canary-password" not in str(runtime.sources.get("siem-basic").as_dict())


@pytest.mark.requires("dovecot")
def test_an_imap_source_stores_a_reported_message_with_a_large_attachment(
    runtime: Runtime, imap_account: ImapAccount
) -> None:
    """A record of an e-mail source is a whole message: a source set up as the README shows
    takes a 300 KB report (a PDF attached) as an alert, not as a dead letter over 64 KiB."""
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 1200
    message = MIMEMultipart()
    message["From"] = "Billing <billing@invoices.example>"
    message["To"] = "victim@corp.example"
    message["Subject"] = "Overdue invoice"
    message["Date"] = "Wed, 13 Sep 2023 00:14:01 +0000"
    message["Message-ID"] = "<invoice-4711@invoices.example>"
    message.attach(MIMEText('<a href="https://pay.invoices.example/login">Pay now</a>', "html"))
    message.attach(MIMEApplication(pdf, Name="invoice.pdf"))
    raw = message.as_bytes()
    assert len(raw) > 300_000
    imap_account.append(raw)
    connection = {
        "host": imap_account.server.host,
        "port": imap_account.server.port,
        "security": "none",
        "username": imap_account.username,
        "poll_interval": 3600,
    }
    runtime.sources.create(
        "phish-big",
        "imap",
        "email",
        settings={"connection": connection},
        secret=_secret(imap_account.password),
    )

    async def scenario() -> None:
        intake = NotifyingIntake(runtime)
        runner = SourceRunner(runtime, intake)
        await runner.start()

        async def landed() -> bool:
            found = await asyncio.to_thread(runtime.sources.get, "phish-big")
            return found.counters.received >= 1

        try:
            await _until(intake, landed)
        finally:
            await runner.stop()

    asyncio.run(scenario())
    counters = runtime.sources.get("phish-big").counters
    assert (counters.received, counters.stored, counters.dead_lettered) == (1, 1, 0)
    (alert,) = runtime.alerts.list_all(source="phish-big")
    assert alert.email is not None
    assert [a.sha256 for a in alert.email.attachments] == [hashlib.sha256(pdf).hexdigest()]
    assert "https://pay.invoices.example/login" in alert.email.urls
