"""The IMAP poller against a real Dovecot, with checkpoints on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from typing import Any

import pytest
import structlog
from pydantic import ValidationError
from structlog.testing import capture_logs

from quell.clock import ManualClock
from quell.ingest.checkpoints import DbCheckpointStore
from quell.ingest.imap import (
    ImapConfig,
    ImapLoginFailed,
    ImapPoller,
    ImapSecurity,
    ImapUnavailable,
    PollResult,
)
from quell.ingest.intake import IntakeResult
from quell.ingest.model import Alert
from quell.ingest.parsers.email import EmailParser
from quell.logs import configure_logging
from quell.sdk.secret import SecretValue
from quell.settings import LogFormat, LogLevel
from quell.store.database import Database
from tests.fixtures.requirements import corpus_path
from tests.ingest.dovecot import DovecotServer, ImapAccount, free_port

pytestmark = pytest.mark.requires("dovecot")

SOURCE = "phish-inbox"


class RecordingSink:
    """An IntakeSink that keeps what it was given, or fails when told to."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[bytes]]] = []
        self.fail_with: Exception | None = None

    async def submit(self, source: str, records: Sequence[bytes]) -> IntakeResult:
        """Record the batch as stored, unless a failure is armed."""
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append((source, list(records)))
        return IntakeResult(received=len(records), stored=len(records))

    @property
    def records(self) -> list[bytes]:
        """Every record submitted, in order."""
        return [record for _, batch in self.batches for record in batch]


class Sleeps:
    """An injectable sleep that returns at once, records the delays, and can stop a loop."""

    def __init__(self, stop: asyncio.Event, after: int) -> None:
        self.delays: list[float] = []
        self.stop = stop
        self.after = after

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) >= self.after:
            self.stop.set()


def message(subject: str, body: str = "Please verify your account", size: int = 0) -> bytes:
    """A small phish-like message; ``size`` pads the body to at least that many bytes."""
    msg = EmailMessage()
    msg["From"] = "Security Team <security@account-verify.example>"
    msg["To"] = "alice@corp.example"
    msg["Subject"] = subject
    msg["Date"] = "Tue, 03 Oct 2023 09:00:00 +0000"
    msg["Message-ID"] = f"<{abs(hash(subject))}@account-verify.example>"
    msg.set_content(f"{body}: https://account-verify.example/login\n" + "x" * size)
    return msg.as_bytes()


def config_for(account: ImapAccount, **overrides: Any) -> ImapConfig:
    """A poller configuration for ``account`` over loopback plaintext."""
    values: dict[str, Any] = {
        "host": account.server.host,
        "port": account.server.port,
        "security": "none",
        "username": account.username,
        "password": account.password,
        "connect_timeout": 10,
        "read_timeout": 10,
    }
    values.update(overrides)
    return ImapConfig.model_validate(values)


@pytest.fixture
def checkpoints(database: Database, clock: ManualClock) -> DbCheckpointStore:
    """The real checkpoint store, on the backend under test."""
    return DbCheckpointStore(database, clock)


@pytest.fixture
def sink() -> RecordingSink:
    """A sink that records batches."""
    return RecordingSink()


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything logged, at debug level, as Quell renders it (JSON lines)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.DEBUG, stream=stream)
    yield stream
    root.handlers, root.level = saved[0], saved[1]
    structlog.reset_defaults()


def poller_for(
    account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
    **overrides: Any,
) -> ImapPoller:
    return ImapPoller(SOURCE, config_for(account, **overrides), sink, checkpoints, clock=clock)


def poll(poller: ImapPoller) -> PollResult:
    async def once() -> PollResult:
        try:
            return await poller.poll_once()
        finally:
            await poller.close()

    return asyncio.run(once())


def poll_twice(poller: ImapPoller) -> tuple[PollResult, PollResult]:
    """Two polls on one connection."""

    async def both() -> tuple[PollResult, PollResult]:
        try:
            return await poller.poll_once(), await poller.poll_once()
        finally:
            await poller.close()

    return asyncio.run(both())


# -- configuration -----------------------------------------------------------------------------


def test_plaintext_is_refused_to_a_remote_host_unless_allowed() -> None:
    base = {"host": "imap.corp.example", "username": "soc", "password": "pw"}
    with pytest.raises(ValidationError, match="clear text"):
        ImapConfig.model_validate({**base, "security": "none"})
    assert ImapConfig.model_validate({**base, "security": "none", "allow_plaintext": True})
    for host in ("127.0.0.1", "::1", "localhost"):
        assert ImapConfig.model_validate({**base, "host": host, "security": "none"})


def test_configuration_defaults_durations_and_a_redacted_password() -> None:
    config = ImapConfig.model_validate(
        {
            "host": "imap.corp.example",
            "username": "soc",
            "password": "hunter2-secret",
            "poll_interval": "5m",
            "connect_timeout": 7.5,
        }
    )
    assert config.security is ImapSecurity.TLS
    assert config.effective_port == 993
    assert config.folder == "INBOX"
    assert config.poll_interval == 300
    assert config.connect_timeout == 7.5
    assert isinstance(config.password, SecretValue)
    assert "hunter2" not in repr(config)
    assert "hunter2" not in config.model_dump_json()
    starttls = config.model_copy(update={"security": ImapSecurity.STARTTLS})
    assert starttls.effective_port == 143
    with pytest.raises(ValidationError, match="poll_interval"):
        ImapConfig.model_validate({**config.model_dump(), "poll_interval": "soon"})
    with pytest.raises(ValidationError, match="processed_folder must differ"):
        ImapConfig.model_validate(
            {"host": "h", "username": "u", "password": "p", "processed_folder": "INBOX"}
        )


# -- polling -----------------------------------------------------------------------------------


@pytest.mark.requires("corpus")
def test_new_messages_are_submitted_once_and_moved(
    imap_account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    originals = [
        (corpus_path() / "phishing" / name).read_bytes()
        for name in ("sample-1.eml", "sample-200.eml")
    ]
    for raw in originals:
        imap_account.append(raw)
    poller = poller_for(imap_account, sink, checkpoints, clock, processed_folder="Processed")

    first, second = poll_twice(poller)

    assert first.fetched == 2
    assert first.moved == 2
    assert first.intake == IntakeResult(received=2, stored=2)
    assert not first.more
    assert second.fetched == 0
    assert len(sink.batches) == 1
    assert sink.batches[0][0] == SOURCE
    assert sink.records == originals  # verbatim, byte for byte
    parser = EmailParser()
    alerts = [parser.parse(record) for record in sink.records]
    assert all(isinstance(alert, Alert) for alert in alerts)
    senders = [alert.email.sender for alert in alerts if isinstance(alert, Alert) and alert.email]
    assert senders == ["banco.bradesco@atendimento.com.br", "newsmail@appsh.serenitepure.fr"]
    assert imap_account.uids("INBOX") == []
    assert imap_account.bodies("Processed") == originals
    assert all(b"\\Seen" in flags for flags in imap_account.flags("Processed").values())
    assert checkpoints.load(f"imap:{SOURCE}:INBOX") == {
        "uidvalidity": first.uidvalidity,
        "last_uid": 2,
    }


def test_the_checkpoint_survives_a_new_poller_and_nothing_is_submitted_twice(
    imap_account: ImapAccount,
    sink: RecordingSink,
    database: Database,
    clock: ManualClock,
) -> None:
    imap_account.append(message("first"))
    imap_account.append(message("second"))
    first = poll(poller_for(imap_account, sink, DbCheckpointStore(database, clock), clock))
    assert first.fetched == 2

    imap_account.append(message("third"))
    # A restart: a new poller and a new store over the same database.
    again = poll(poller_for(imap_account, sink, DbCheckpointStore(database, clock), clock))

    assert again.fetched == 1
    assert again.last_uid == 3
    assert [b"Subject: third" in record for record in sink.records] == [False, False, True]
    # Not moved (no processed folder): marked seen, so people see they were handled.
    assert imap_account.uids() == [1, 2, 3]
    assert all(b"\\Seen" in flags for flags in imap_account.flags().values())


def test_without_mark_seen_the_folder_is_read_only(
    imap_account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    imap_account.append(message("look but do not touch"))
    result = poll(poller_for(imap_account, sink, checkpoints, clock, mark_seen=False))
    assert result.fetched == 1
    assert result.marked_seen == 0
    assert imap_account.flags() == {1: set()}


def test_a_full_batch_leaves_the_rest_for_the_next_poll(
    imap_account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    for n in range(5):
        imap_account.append(message(f"batch {n}"))
    poller = poller_for(imap_account, sink, checkpoints, clock, batch_size=2)

    async def drain() -> list[PollResult]:
        try:
            return [await poller.poll_once() for _ in range(3)]
        finally:
            await poller.close()

    results = asyncio.run(drain())
    assert [(r.fetched, r.more, r.last_uid) for r in results] == [
        (2, True, 2),
        (2, True, 4),
        (1, False, 5),
    ]
    assert [len(batch) for _, batch in sink.batches] == [2, 2, 1]


def test_a_uidvalidity_change_starts_over_from_the_first_message(
    imap_account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    imap_account.append(message("old one"), folder="Phish")
    imap_account.append(message("old two"), folder="Phish")
    before = poll(poller_for(imap_account, sink, checkpoints, clock, folder="Phish"))
    assert before.last_uid == 2

    imap_account.recreate_folder("Phish")  # new UIDVALIDITY; UIDs restart at 1
    imap_account.append(message("new after restore"), folder="Phish")
    with capture_logs() as logs:
        after = poll(poller_for(imap_account, sink, checkpoints, clock, folder="Phish"))

    assert after.restarted
    assert after.uidvalidity != before.uidvalidity
    assert after.uidvalidity == imap_account.uidvalidity("Phish")
    assert after.fetched == 1  # UID 1, below the old checkpoint's 2, is still new
    assert b"Subject: new after restore" in sink.records[-1]
    changed = [entry for entry in logs if entry["event"] == "imap_uidvalidity_changed"]
    assert changed[0]["previous"] == before.uidvalidity
    assert changed[0]["current"] == after.uidvalidity
    assert "recreated" in changed[0]["reason"]
    assert checkpoints.load(f"imap:{SOURCE}:Phish") == {
        "uidvalidity": after.uidvalidity,
        "last_uid": 1,
    }


def test_a_sink_failure_leaves_the_checkpoint_and_the_next_poll_resubmits(
    imap_account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    imap_account.append(message("one"))
    imap_account.append(message("two"))
    poller = poller_for(imap_account, sink, checkpoints, clock, processed_folder="Done")
    sink.fail_with = RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        poll(poller)

    assert checkpoints.load(f"imap:{SOURCE}:INBOX") is None
    assert imap_account.uids("INBOX") == [1, 2]  # neither moved
    assert imap_account.flags() == {1: set(), 2: set()}  # nor marked seen
    sink.fail_with = None
    result = poll(poller)
    assert result.fetched == 2
    assert result.moved == 2
    assert len(sink.records) == 2
    assert imap_account.uids("INBOX") == []


def test_too_large_messages_are_skipped_logged_and_left_for_a_person(
    imap_account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    imap_account.append(message("huge", size=5000))
    imap_account.append(message("small"))
    poller = poller_for(
        imap_account, sink, checkpoints, clock, max_message_bytes=2048, processed_folder="Done"
    )
    with capture_logs() as logs:
        result = poll(poller)
    assert (result.fetched, result.too_large, result.last_uid) == (1, 1, 2)
    assert b"Subject: small" in sink.records[0]
    skipped = [entry for entry in logs if entry["event"] == "imap_message_too_large"]
    assert skipped[0]["uid"] == 1
    assert skipped[0]["limit"] == 2048
    assert imap_account.uids("INBOX") == [1]
    assert imap_account.uids("Done") == [1]


def test_a_dropped_connection_is_reopened_once(
    imap_account: ImapAccount,
    dovecot_server: DovecotServer,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    poller = poller_for(imap_account, sink, checkpoints, clock)

    async def scenario() -> PollResult:
        try:
            await poller.poll_once()
            dovecot_server.kick(imap_account.username)  # the server drops the idle session
            imap_account.append(message("after the kick"))
            return await poller.poll_once()
        finally:
            await poller.close()

    with capture_logs() as logs:
        result = asyncio.run(scenario())
    assert result.fetched == 1
    assert any(entry["event"] == "imap_reconnecting" for entry in logs)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("security", "port"), [("tls", "tls_port"), ("starttls", "port")], ids=["tls", "starttls"]
)
def test_tls_and_starttls_with_the_servers_ca(
    security: str,
    port: str,
    imap_account: ImapAccount,
    dovecot_server: DovecotServer,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    imap_account.append(message("over tls"))
    poller = poller_for(
        imap_account,
        sink,
        checkpoints,
        clock,
        security=security,
        port=getattr(dovecot_server, port),
        ca_file=dovecot_server.ca_file,
    )
    assert poll(poller).fetched == 1


def test_an_untrusted_certificate_is_refused(
    imap_account: ImapAccount,
    dovecot_server: DovecotServer,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    poller = poller_for(
        imap_account, sink, checkpoints, clock, security="tls", port=dovecot_server.tls_port
    )
    with pytest.raises(ImapUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        poll(poller)


# -- failures ----------------------------------------------------------------------------------


def test_a_wrong_password_is_a_clear_error_that_never_shows_the_password(
    imap_account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
    log_output: io.StringIO,
) -> None:
    wrong = "Wr0ng-Pa55word-do-not-log"
    poller = poller_for(imap_account, sink, checkpoints, clock, password=wrong)

    with pytest.raises(ImapLoginFailed) as caught:
        poll(poller)
    error = caught.value
    assert str(error) == (
        f"IMAP login as {imap_account.username!r} on 127.0.0.1:{imap_account.server.port} "
        "failed: LoginError: [AUTHENTICATIONFAILED] Authentication failed."
    )
    assert error.code.value == "config_invalid"
    for text in (str(error), repr(error), json.dumps(error.to_dict())):
        assert wrong not in text

    # The loop gives up at once (retrying a wrong password locks accounts) and says why.
    stop = asyncio.Event()
    with pytest.raises(ImapLoginFailed):
        asyncio.run(poller.run(stop))
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert any(line["event"] == "imap_login_failed" for line in lines)
    # imapclient logs the protocol at debug level; the LOGIN command is redacted there too.
    assert any(line.get("logger") == "imapclient.imaplib" for line in lines)
    assert wrong not in log_output.getvalue()
    assert imap_account.password not in log_output.getvalue()
    assert sink.batches == []


def test_connection_failures_back_off_exponentially_and_never_log_the_password(
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
    log_output: io.StringIO,
) -> None:
    config = ImapConfig(
        host="127.0.0.1",
        port=free_port(),  # nothing listens there
        security=ImapSecurity.NONE,
        username="soc",
        password=SecretValue("s3cret-never-logged"),
        connect_timeout=5,
        backoff_initial=1,
        backoff_max=4,
    )
    stop = asyncio.Event()
    sleeps = Sleeps(stop, after=5)
    poller = ImapPoller(SOURCE, config, sink, checkpoints, clock=clock, sleep=sleeps)

    asyncio.run(poller.run(stop))

    assert sleeps.delays == [1, 2, 4, 4, 4]
    failures = [
        json.loads(line)
        for line in log_output.getvalue().splitlines()
        if '"imap_poll_failed"' in line
    ]
    assert [f["failures"] for f in failures] == [1, 2, 3, 4, 5]
    assert "ConnectionRefusedError" in failures[0]["error"]
    assert "s3cret" not in log_output.getvalue()


def test_run_polls_then_waits_the_interval_until_stopped(
    imap_account: ImapAccount,
    sink: RecordingSink,
    checkpoints: DbCheckpointStore,
    clock: ManualClock,
) -> None:
    for n in range(3):
        imap_account.append(message(f"loop {n}"))
    stop = asyncio.Event()
    sleeps = Sleeps(stop, after=1)
    poller = ImapPoller(
        SOURCE,
        config_for(imap_account, batch_size=2, poll_interval="90s"),
        sink,
        checkpoints,
        clock=clock,
        sleep=sleeps,
    )

    asyncio.run(poller.run(stop))

    # Two full-batch polls back to back, then the interval; the stop cuts the wait short.
    assert [len(batch) for _, batch in sink.batches] == [2, 1]
    assert sleeps.delays == [90]
