"""The mail connector against real servers: aiosmtpd for SMTP, Dovecot for IMAP.

SMTP: an aiosmtpd server runs in a thread on a free loopback port, in three shapes (STARTTLS
required before anything, TLS from the first byte, plaintext), all with AUTH against one
username and password, a certificate from a throwaway CA, and a handler that keeps every
message it accepts and answers the local parts ``busy`` with 450 and ``nobody`` with 550.

IMAP: the session's Dovecot (``tests/ingest/dovecot.py``); each test has a user of its own,
whose INBOX and Junk get real messages by APPEND: two phishing messages from one sender (one
with the URL only in a quoted-printable HTML part, written ``&amp;`` as HTML does), a
look-alike sender, a German phishing subject, and benign mail. What a test asserts it reads
back from the server over its own IMAP session, never from the connector's answer alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import re
import ssl
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import BaseModel, ValidationError

from quell.connectors.mail import (
    DeleteIn,
    DeleteOut,
    Mail,
    MailConfig,
    QuarantineIn,
    QuarantineOut,
    RestoreIn,
    RestoreOut,
    SearchIn,
    SearchOut,
    SendIn,
    SendOut,
)
from quell.connectors.registry import Registry
from quell.sdk import (
    ActionContext,
    AuthError,
    PermanentError,
    RiskLevel,
    SecretValue,
    TargetNotFound,
    TransientError,
)
from tests.ingest import dovecot
from tests.ingest.dovecot import HOST, DovecotServer, ImapAccount, free_port

T = TypeVar("T")

needs_dovecot = pytest.mark.requires("dovecot")

SMTP_USER = "quell-notifier"
SMTP_PASSWORD = "smtp-pa55-" + uuid.uuid4().hex[:8]
PHISH_URL = "https://login.evil.example/reset?user=alice&token=3d"


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _ctx(key: str | None = None, *, dry_run: bool = False, **secrets: str) -> ActionContext:
    return ActionContext(
        run_id="run-mail",
        step_id="contain",
        attempt=1,
        idempotency_key=key or uuid.uuid4().hex,
        dry_run=dry_run,
        secrets={name: SecretValue(value) for name, value in secrets.items()},
    )


# -- the SMTP server ---------------------------------------------------------------------------


@dataclass
class Received:
    """One message the SMTP server accepted, with how it came."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        """The message, parsed (with the line ends SMTP put on the wire made local again)."""
        raw = self.raw.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Recorder:
    """An aiosmtpd handler: keeps what it accepts; ``busy`` gets 450, ``nobody`` 550."""

    received: list[Received] = field(default_factory=list)
    greetings: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Count the sessions that said hello."""
        with self.lock:
            self.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Accept every recipient but ``busy@`` (450) and ``nobody@`` (550)."""
        local = address.partition("@")[0]
        if local == "busy":
            return "450 4.2.1 Mailbox busy, try again later"
        if local == "nobody":
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        """Keep the message; refuse it (554) or defer it (451) when its body says so."""
        raw = envelope.original_content or b""
        if b"REJECT-ME" in raw:
            return "554 5.6.0 Refused as spam"
        if b"DEFER-ME" in raw:
            return "451 4.3.0 Local problem, try again later"
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        with self.lock:
            self.received.append(
                Received(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=list(envelope.rcpt_tos),
                    raw=bytes(raw),
                    tls=tls,
                    login=session.auth_data if session.authenticated else None,
                )
            )
        return "250 2.0.0 Ok: queued as QUELL42"


def _authenticate(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """AUTH PLAIN / LOGIN against the one test account."""
    good = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    # handled=False: aiosmtpd answers (235 or 535) itself.
    return AuthResult(success=good, handled=False, auth_data=SMTP_USER if good else None)


@dataclass
class SmtpServer:
    """A running aiosmtpd server."""

    security: str
    port: int
    ca_file: Path
    recorder: Recorder
    controller: Controller


def _start_smtp(security: str, tls_dir: Path) -> SmtpServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
    recorder = Recorder()
    options: dict[str, Any] = {
        "hostname": HOST,
        "port": free_port(),
        "server_hostname": "mx.quell.test",
        "authenticator": _authenticate,
    }
    if security == "starttls":
        options |= {"tls_context": context, "require_starttls": True}
    elif security == "tls":
        # aiosmtpd counts only STARTTLS as TLS for AUTH; this connection is TLS throughout.
        options |= {"ssl_context": context, "auth_require_tls": False}
    else:
        options |= {"auth_require_tls": False}  # plaintext AUTH, on loopback only
    controller = Controller(recorder, **options)
    controller.start()
    return SmtpServer(security, options["port"], tls_dir / "ca.pem", recorder, controller)


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a certificate for 127.0.0.1 (the same helper Dovecot's uses)."""
    folder = tmp_path_factory.mktemp("smtp") / "tls"
    dovecot._write_certificates(folder)
    return folder


@pytest.fixture(scope="module")
def smtp_servers(tls_dir: Path) -> Iterator[dict[str, SmtpServer]]:
    """One server per security mode, for the module."""
    servers: dict[str, SmtpServer] = {}
    try:
        for security in ("starttls", "tls", "none"):
            servers[security] = _start_smtp(security, tls_dir)
        yield servers
    finally:
        for server in servers.values():
            server.controller.stop()


@pytest.fixture
def smtp(smtp_servers: dict[str, SmtpServer]) -> SmtpServer:
    """The STARTTLS server, with nothing received yet."""
    return _fresh(smtp_servers["starttls"])


def _fresh(server: SmtpServer) -> SmtpServer:
    with server.recorder.lock:
        server.recorder.received.clear()
        server.recorder.greetings = 0
    return server


def _smtp_mail(server: SmtpServer, **overrides: Any) -> Mail:
    values: dict[str, Any] = {
        "host": HOST,
        "port": server.port,
        "security": server.security,
        "username": SMTP_USER,
        "from_address": "soc@corp.example",
        "from_name": "Quell SOC",
        "allowed_recipient_domains": ["corp.example", "*.partner.example"],
        "ca_file": server.ca_file,
        "timeout": 10,
    }
    values.update(overrides)
    return Mail(Mail.Config(**values))


def _send(
    mail: Mail,
    ctx: ActionContext | None = None,
    *,
    password: str = SMTP_PASSWORD,
    **inputs: Any,
) -> SendOut:
    inputs.setdefault("subject", "Phishing campaign contained")
    inputs.setdefault("text", "Quell quarantined 2 messages.")
    return _run(mail.send(ctx or _ctx(smtp_password=password), SendIn.model_validate(inputs)))


# -- SMTP tests --------------------------------------------------------------------------------


def test_send_over_starttls_arrives_with_the_right_envelope_and_headers(smtp: SmtpServer) -> None:
    key = f"run-7/notify/{uuid.uuid4().hex}"
    sent = _send(
        _smtp_mail(smtp),
        _ctx(key, smtp_password=SMTP_PASSWORD),
        to=["alice@corp.example", "Bob@Corp.Example"],
        cc=["carol@eu.partner.example"],
        subject="Phishing: »Password expires« quarantined",
        text="Quell moved 2 messages to Quarantine.\n.\nA line with only a dot above.",
        html="<p>Quell moved <b>2</b> messages to Quarantine.</p>",
    )

    (received,) = smtp.recorder.received
    assert received.tls
    assert received.login == SMTP_USER
    assert received.mail_from == "soc@corp.example"
    assert received.rcpt_tos == [
        "alice@corp.example",
        "Bob@corp.example",
        "carol@eu.partner.example",
    ]
    message = received.message
    assert message["From"] == "Quell SOC <soc@corp.example>"
    assert message["To"] == "alice@corp.example, Bob@corp.example"
    assert message["Cc"] == "carol@eu.partner.example"
    assert message["Subject"] == "Phishing: »Password expires« quarantined"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"] is not None
    assert message["Bcc"] is None
    assert message["Message-ID"] == sent.message_id
    assert sent.message_id.startswith("<quell.")
    assert sent.message_id.endswith("@corp.example>")
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert text.get_content() == (
        "Quell moved 2 messages to Quarantine.\n.\nA line with only a dot above.\n"
    )
    assert html.get_content() == "<p>Quell moved <b>2</b> messages to Quarantine.</p>\n"
    assert sent.accepted == received.rcpt_tos
    assert sent.refused == {}
    assert "QUELL42" in sent.reply


def test_a_retried_send_carries_the_same_message_id(smtp: SmtpServer) -> None:
    mail = _smtp_mail(smtp)
    key = f"run-8/notify/{uuid.uuid4().hex}"

    first = _send(mail, _ctx(key, smtp_password=SMTP_PASSWORD), to=["alice@corp.example"])
    retry = _send(mail, _ctx(key, smtp_password=SMTP_PASSWORD), to=["alice@corp.example"])
    other = _send(mail, to=["alice@corp.example"])

    assert first.message_id == retry.message_id != other.message_id
    ids = [r.message["Message-ID"] for r in smtp.recorder.received]
    assert ids == [first.message_id, first.message_id, other.message_id]


@pytest.mark.parametrize(
    ("to", "refused"),
    [
        (["mallory@evil.example"], "mallory@evil.example"),
        (["alice@corp.example", "x@corp.example.evil"], "x@corp.example.evil"),
        (["x@sub.corp.example"], "x@sub.corp.example"),  # corp.example is listed, not *.
        (["x@partner.example"], "x@partner.example"),  # *.partner.example: subdomains only
    ],
)
def test_a_recipient_outside_the_allowed_domains_is_refused_before_any_connection(
    smtp: SmtpServer, to: list[str], refused: str
) -> None:
    with pytest.raises(
        PermanentError, match=re.escape(f"recipient {refused} is not at an allowed domain")
    ):
        _send(_smtp_mail(smtp), to=to)
    assert smtp.recorder.greetings == 0
    assert smtp.recorder.received == []

    nowhere = _smtp_mail(smtp, port=free_port())  # nothing listens: a connection would fail
    with pytest.raises(PermanentError, match="is not at an allowed domain") as raised:
        _send(nowhere, to=to)
    assert raised.value.code == "recipient_not_allowed"
    assert raised.value.details == {"recipients": [refused]}


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({"subject": "Hello\r\nBcc: all@evil.example"}, "subject", "line breaks"),
        ({"subject": "Hello\nX-Injected: 1"}, "subject", "line breaks"),
        ({"subject": "Hello\u2028World"}, "subject", "line breaks"),
        ({"to": ["alice@corp.example\r\nBcc: x@evil.example"]}, "to.0", "line breaks"),
        ({"cc": ["a@corp.example>, <x@evil.example"]}, "cc.0", "is not an e-mail address"),
        ({"to": ["Alice <alice@corp.example>"]}, "to.0", "is not an e-mail address"),
        ({"to": []}, "to", "at least 1"),
        ({"to": [f"u{n}@corp.example" for n in range(51)]}, "to", "at most 50"),
        (
            {
                "to": [f"u{n}@corp.example" for n in range(30)],
                "cc": [f"c{n}@corp.example" for n in range(21)],
            },
            "",
            "at most 50 recipients in to and cc together",
        ),
        ({"text": "a\x00b"}, "text", "NUL"),
        ({"bcc": ["x@corp.example"]}, "bcc", "Extra inputs"),
    ],
)
def test_bad_send_input_fails_validation_naming_the_field(
    inputs: dict[str, Any], field: str, message: str
) -> None:
    values = {"to": ["alice@corp.example"], "subject": "s", "text": "t"} | inputs
    with pytest.raises(ValidationError) as raised:
        SendIn.model_validate(values)
    error = raised.value.errors()[0]
    assert ".".join(str(part) for part in error["loc"]) == field
    assert message in error["msg"]


def test_bad_smtp_credentials_are_an_auth_error_without_the_password(smtp: SmtpServer) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    with pytest.raises(AuthError, match=f"refused the login as '{SMTP_USER}': 535") as raised:
        _send(_smtp_mail(smtp), password=wrong, to=["alice@corp.example"])
    assert wrong not in str(raised.value)
    assert raised.value.retryable is False
    assert smtp.recorder.received == []


def test_a_missing_smtp_password_is_named(smtp: SmtpServer) -> None:
    with pytest.raises(PermanentError, match="secret 'smtp_password' is not configured"):
        _run(
            _smtp_mail(smtp).send(_ctx(), SendIn(to=["alice@corp.example"], subject="s", text="t"))
        )


def test_an_unreachable_smtp_server_is_transient() -> None:
    port = free_port()
    mail = Mail(
        MailConfig(
            host=HOST,
            port=port,
            security="none",
            from_address="soc@corp.example",
            allowed_recipient_domains=["corp.example"],
        )
    )
    with pytest.raises(
        TransientError, match=re.escape(f"cannot reach SMTP server {HOST}:{port}")
    ) as raised:
        _send(mail, to=["alice@corp.example"])
    assert raised.value.retryable is True
    assert raised.value.code == "unreachable"


def test_4xx_answers_are_transient_and_5xx_permanent(smtp: SmtpServer) -> None:
    mail = _smtp_mail(smtp)
    with pytest.raises(
        TransientError, match=re.escape("refused every recipient: busy@corp.example: 450")
    ):
        _send(mail, to=["busy@corp.example"])
    with pytest.raises(
        PermanentError, match=re.escape("refused every recipient: nobody@corp.example: 550")
    ):
        _send(mail, to=["nobody@corp.example"])

    partly = _send(mail, to=["alice@corp.example", "nobody@corp.example", "busy@corp.example"])

    assert partly.accepted == ["alice@corp.example"]
    assert set(partly.refused) == {"nobody@corp.example", "busy@corp.example"}
    assert partly.refused["nobody@corp.example"].startswith("550 ")
    (received,) = smtp.recorder.received
    assert received.rcpt_tos == ["alice@corp.example"]


def test_an_answer_to_the_message_itself_is_transient_or_permanent_by_its_code(
    smtp: SmtpServer,
) -> None:
    mail = _smtp_mail(smtp)
    with pytest.raises(PermanentError, match=r"answered 554 5\.6\.0 Refused as spam") as refused:
        _send(mail, to=["alice@corp.example"], text="REJECT-ME")
    assert refused.value.retryable is False
    assert refused.value.details == {"smtp_code": 554}

    with pytest.raises(TransientError, match=r"answered 451 4\.3\.0") as deferred:
        _send(mail, to=["alice@corp.example"], text="DEFER-ME")
    assert deferred.value.details == {"smtp_code": 451}
    assert smtp.recorder.received == []


def test_tls_from_the_first_byte_and_an_untrusted_certificate(
    smtp_servers: dict[str, SmtpServer],
) -> None:
    server = _fresh(smtp_servers["tls"])

    _send(_smtp_mail(server), to=["alice@corp.example"])

    (received,) = server.recorder.received
    assert received.tls
    assert received.login == SMTP_USER
    for security in ("tls", "starttls"):
        untrusted = _smtp_mail(_fresh(smtp_servers[security]), ca_file=None)
        with pytest.raises(PermanentError, match="TLS certificate is not trusted") as raised:
            _send(untrusted, to=["alice@corp.example"])
        assert raised.value.code == "tls_untrusted"
        assert raised.value.retryable is False


def test_plaintext_smtp_on_loopback(smtp_servers: dict[str, SmtpServer]) -> None:
    server = _fresh(smtp_servers["none"])

    _send(_smtp_mail(server, ca_file=None), to=["alice@corp.example"])

    (received,) = server.recorder.received
    assert not received.tls
    assert received.login == SMTP_USER


def test_starttls_is_required_not_hoped_for(smtp_servers: dict[str, SmtpServer]) -> None:
    plain = _fresh(smtp_servers["none"])  # offers no STARTTLS
    with pytest.raises(PermanentError, match="STARTTLS"):
        _send(_smtp_mail(plain, security="starttls"), to=["alice@corp.example"])
    assert plain.recorder.received == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "configure SMTP (host), IMAP (imap_host) or both"),
        (
            {"host": "smtp.corp.example", "allowed_recipient_domains": ["corp.example"]},
            "from_address",
        ),
        (
            {"host": "smtp.corp.example", "from_address": "soc@corp.example"},
            "allowed_recipient_domains",
        ),
        (
            {
                "host": "smtp.corp.example",
                "security": "none",
                "from_address": "soc@corp.example",
                "allowed_recipient_domains": ["corp.example"],
            },
            "security 'none' sends the password in clear text",
        ),
        (
            {"imap_host": "imap.corp.example", "imap_username": "u", "imap_security": "none"},
            "imap_security 'none' sends the password in clear text",
        ),
        ({"imap_host": "imap.corp.example"}, "imap_username is required"),
        (
            {"imap_host": "h", "imap_username": "u", "mailboxes": ["INBOX", "inbox"]},
            "mailboxes lists a mailbox twice",
        ),
        (
            {"imap_host": "h", "imap_username": "u", "quarantine_folder": "INBOX"},
            "must not be one of the mailboxes",
        ),
        ({"imap_host": "h", "imap_username": "u", "mailboxes": ["Junk\r\n"]}, "line breaks"),
        (
            {
                "host": "h",
                "from_address": "soc@corp.example",
                "allowed_recipient_domains": ["corp example"],
            },
            "is not a domain name",
        ),
    ],
)
def test_bad_configuration_is_refused_naming_the_problem(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        MailConfig.model_validate(values)


def test_the_registry_takes_the_connector_with_its_actions() -> None:
    registry = Registry()
    registry.add(Mail)

    actions = {key: definition.meta for key, definition in registry.actions.items()}
    assert sorted(actions) == [
        "mail.delete_messages",
        "mail.quarantine_messages",
        "mail.restore_messages",
        "mail.search_messages",
        "mail.send",
    ]
    assert actions["mail.send"].risk is RiskLevel.LOW
    assert actions["mail.send"].idempotent is False
    assert actions["mail.search_messages"].risk is RiskLevel.READ
    assert actions["mail.search_messages"].idempotent is True
    assert actions["mail.quarantine_messages"].risk is RiskLevel.MEDIUM
    assert actions["mail.quarantine_messages"].reverts == "restore_messages"
    assert actions["mail.quarantine_messages"].supports_dry_run is True
    assert actions["mail.restore_messages"].risk is RiskLevel.LOW
    assert actions["mail.delete_messages"].risk is RiskLevel.HIGH
    assert actions["mail.delete_messages"].supports_dry_run is True
    assert Mail.secrets == ("smtp_password", "imap_password")
    assert registry.actions["mail.send"].input_model is SendIn


# -- the IMAP mailbox --------------------------------------------------------------------------


def _message(
    sender: str,
    subject: str,
    message_id: str,
    text: str,
    html: str | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "alice@corp.example"
    message["Subject"] = subject
    message["Date"] = "Tue, 03 Oct 2023 09:00:00 +0000"
    message["Message-ID"] = message_id
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message.as_bytes()


# name -> (folder, message)
MESSAGES: dict[str, tuple[str, bytes]] = {
    "phish": (
        "INBOX",
        _message(
            '"IT Helpdesk" <helpdesk@evil.example>',
            "Your password expires today",
            "<phish-1@evil.example>",
            "Your password expires today. Use the link in this message.",
            '<p>Keep your password: <a href="'
            + PHISH_URL.replace("&", "&amp;")
            + '">reset it now</a>.</p>'
            + "<p>"
            + "This long line makes the quoted-printable encoder wrap it. " * 4
            + "</p>",
        ),
    ),
    "phish_junk": (
        "Junk",
        _message(
            "helpdesk@evil.example",
            "Final notice: mailbox quota",
            "<phish-2@evil.example>",
            f"Your mailbox is full. Go to {PHISH_URL} within 24 hours.",
        ),
    ),
    "lookalike": (
        "INBOX",
        _message(
            "IT <it-helpdesk@evil.example.net>",
            "Mailbox quota warning",
            "<lookalike@evil.example.net>",
            "Nothing to see here.",
        ),
    ),
    "german": (
        "INBOX",
        _message(
            "Sicherheit <sicherheit@evil.example>",
            "Ihr Passwort läuft heute ab",
            "<phish-3@evil.example>",
            "Bitte melden Sie sich an.",
        ),
    ),
    "lunch": (
        "INBOX",
        _message(
            "Colleague <colleague@corp.example>",
            "Lunch on Friday",
            "<lunch@corp.example>",
            "The menu is at https://intranet.corp.example/menu?day=fri&veg=1",
        ),
    ),
    "tips": (
        "INBOX",
        _message(
            "Vendor <newsletter@vendor.example>",
            "Password manager tips",
            "<tips@vendor.example>",
            "Ten tips for better passwords.",
        ),
    ),
}


@dataclass
class Mailbox:
    """A Dovecot user with the messages of MESSAGES, and the connector on it."""

    account: ImapAccount
    mail: Mail
    uids: dict[str, tuple[str, int]]  # name -> (folder, UID)

    def ctx(self, *, dry_run: bool = False, password: str | None = None) -> ActionContext:
        """A call context carrying the account's IMAP password (or ``password``)."""
        secret = self.account.password if password is None else password
        return _ctx(dry_run=dry_run, imap_password=secret)

    def search(self, **inputs: Any) -> SearchOut:
        """search_messages with ``inputs``."""
        return _run(self.mail.search_messages(self.ctx(), SearchIn.model_validate(inputs)))

    def quarantine(self, *, dry_run: bool = False, **inputs: Any) -> QuarantineOut:
        """quarantine_messages with ``inputs``."""
        params = QuarantineIn.model_validate(inputs)
        return _run(self.mail.quarantine_messages(self.ctx(dry_run=dry_run), params))

    def restore(self, *, dry_run: bool = False, **inputs: Any) -> RestoreOut:
        """restore_messages with ``inputs``."""
        params = RestoreIn.model_validate(inputs)
        return _run(self.mail.restore_messages(self.ctx(dry_run=dry_run), params))

    def delete(self, *, dry_run: bool = False, **inputs: Any) -> DeleteOut:
        """delete_messages with ``inputs``."""
        params = DeleteIn.model_validate(inputs)
        return _run(self.mail.delete_messages(self.ctx(dry_run=dry_run), params))

    def names(self, matches: list[Any]) -> list[str]:
        """The MESSAGES names of the matches (by folder and UID), in order."""
        by_place = {place: name for name, place in self.uids.items()}
        return [by_place[(m.mailbox, m.uid)] for m in matches]

    def contents(self, folder: str) -> set[bytes]:
        """The raw messages in ``folder`` (empty when it does not exist)."""
        if not self.exists(folder):
            return set()
        return {body.replace(b"\r\n", b"\n") for body in self.account.bodies(folder)}

    def exists(self, folder: str) -> bool:
        """Whether ``folder`` exists, asked over a session of the test's own."""
        with self.account.client() as client:
            return bool(client.folder_exists(folder))

    def state(self) -> dict[str, Any]:
        """Every folder's UIDs and flags: what a dry run must leave as it was."""
        with self.account.client() as client:
            folders = sorted(name for _, _, name in client.list_folders())
        return {folder: self.account.flags(folder) for folder in folders}


def _raw(name: str) -> bytes:
    return MESSAGES[name][1].replace(b"\r\n", b"\n")


def _mailbox_for(account: ImapAccount, **overrides: Any) -> Mailbox:
    uids = {name: (folder, account.append(raw, folder)) for name, (folder, raw) in MESSAGES.items()}
    values: dict[str, Any] = {
        "imap_host": account.server.host,
        "imap_port": account.server.port,
        "imap_security": "none",
        "imap_username": account.username,
        "mailboxes": ["INBOX", "Junk"],
        "imap_timeout": 10,
    }
    values.update(overrides)
    return Mailbox(account, Mail(Mail.Config(**values)), uids)


@pytest.fixture
def mailbox(imap_account: ImapAccount) -> Mailbox:
    """A fresh Dovecot user with MESSAGES delivered."""
    return _mailbox_for(imap_account)


# -- search ------------------------------------------------------------------------------------


@needs_dovecot
def test_search_by_sender_matches_the_address_exactly(mailbox: Mailbox) -> None:
    found = mailbox.search(from_address="HelpDesk@evil.example")

    assert mailbox.names(found.matches) == ["phish", "phish_junk"]  # not it-helpdesk@...net
    first = found.matches[0]
    assert first.mailbox == "INBOX"
    assert first.uid == mailbox.uids["phish"][1]
    assert first.uidvalidity == mailbox.account.uidvalidity("INBOX")
    assert first.message_id == "<phish-1@evil.example>"
    assert first.from_address == "helpdesk@evil.example"
    assert first.subject == "Your password expires today"
    assert first.date == dt.datetime(2023, 10, 3, 9, 0, tzinfo=dt.UTC)
    assert set(first.model_dump()) == {
        "mailbox",
        "uid",
        "uidvalidity",
        "message_id",
        "from_address",
        "subject",
        "date",
    }
    assert found.count == 2
    assert found.truncated is False

    domain = mailbox.search(from_address="@evil.example")
    assert mailbox.names(domain.matches) == ["phish", "german", "phish_junk"]


@needs_dovecot
def test_search_by_subject_is_a_case_insensitive_substring(mailbox: Mailbox) -> None:
    assert mailbox.names(mailbox.search(subject="PASSWORD EXPIRES").matches) == ["phish"]
    assert mailbox.names(mailbox.search(subject="password").matches) == ["phish", "tips"]
    assert mailbox.names(mailbox.search(subject="läuft heute").matches) == ["german"]
    assert mailbox.names(mailbox.search(subject="quota").matches) == [
        "lookalike",
        "phish_junk",
    ]


@needs_dovecot
def test_search_by_url_finds_it_in_html_and_text_bodies(mailbox: Mailbox) -> None:
    found = mailbox.search(url=PHISH_URL)
    assert mailbox.names(found.matches) == ["phish", "phish_junk"]

    assert mailbox.search(url="https://login.evil.example/other").matches == []
    menu = mailbox.search(url="https://intranet.corp.example/menu?day=fri&veg=1")
    assert mailbox.names(menu.matches) == ["lunch"]


@needs_dovecot
def test_search_by_message_id_and_combined_criteria(mailbox: Mailbox) -> None:
    for given in ("<phish-2@evil.example>", "phish-2@evil.example"):
        assert mailbox.names(mailbox.search(message_id=given).matches) == ["phish_junk"]
    assert mailbox.search(message_id="phish-2@evil").matches == []  # exact, not a substring

    both = mailbox.search(from_address="helpdesk@evil.example", subject="quota")
    assert mailbox.names(both.matches) == ["phish_junk"]
    assert mailbox.search(from_address="helpdesk@evil.example", subject="lunch").matches == []


@needs_dovecot
def test_search_since_a_day_and_the_limit(mailbox: Mailbox) -> None:
    today = dt.date.today()
    assert mailbox.search(since=today + dt.timedelta(days=2)).matches == []
    everything = mailbox.search(since=today - dt.timedelta(days=2))
    assert sorted(mailbox.names(everything.matches)) == sorted(MESSAGES)

    limited = mailbox.search(from_address="@evil.example", limit=2)
    assert mailbox.names(limited.matches) == ["phish", "german"]
    assert limited.truncated is True


@needs_dovecot
def test_search_only_reads(mailbox: Mailbox) -> None:
    before = mailbox.state()

    mailbox.search(from_address="helpdesk@evil.example")

    assert mailbox.state() == before  # no \Seen, nothing moved, no folder made


@needs_dovecot
def test_alert_data_cannot_inject_imap_syntax(mailbox: Mailbox) -> None:
    before = mailbox.state()

    for subject in ('x" OR ALL "', "x) OR (ALL", "\\", '"'):
        assert mailbox.search(subject=subject).matches == []
    with pytest.raises(ValidationError, match="line breaks"):
        SearchIn.model_validate({"subject": "x\r\nA1 DELETE INBOX"})
    with pytest.raises(ValidationError, match="line breaks"):
        RestoreIn.model_validate({"messages": [{"message_id": "a@b", "mailbox": "INBOX\r\n"}]})

    assert mailbox.state() == before


@pytest.mark.parametrize(
    ("model", "inputs", "field", "message"),
    [
        (SearchIn, {}, "", "give at least one criterion: from_address, subject, url"),
        (SearchIn, {"limit": 5}, "", "give at least one criterion"),
        (QuarantineIn, {}, "", "give at least one criterion"),
        (DeleteIn, {"since": "2024-01-01"}, "", "since alone selects every message"),
        (
            QuarantineIn,
            {"subject": "x", "messages": [{"mailbox": "INBOX", "uid": 1}]},
            "",
            "give criteria or messages, not both (got subject)",
        ),
        (SearchIn, {"from_address": "not an address"}, "from_address", "is not an e-mail address"),
        (SearchIn, {"url": "login.evil.example"}, "url", "is not a URL"),
        (SearchIn, {"message_id": "<a b@c>"}, "message_id", "is not a Message-ID"),
        (SearchIn, {"subject": ""}, "subject", "at least 1"),
        (SearchIn, {"body": "x"}, "body", "Extra inputs"),
        (QuarantineIn, {"messages": [{"mailbox": "INBOX", "uid": 0}]}, "messages.0.uid", "1"),
        (RestoreIn, {"messages": [{"mailbox": "INBOX"}]}, "messages.0", "give message_id"),
        (DeleteIn, {"subject": "x", "max_messages": 5000}, "max_messages", "1000"),
    ],
)
def test_bad_imap_input_fails_validation_naming_the_problem(
    model: type[BaseModel], inputs: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(inputs)
    error = raised.value.errors()[0]
    assert ".".join(str(part) for part in error["loc"]) == field
    assert message in error["msg"]


# -- quarantine and restore --------------------------------------------------------------------


@needs_dovecot
def test_quarantine_moves_the_matches_and_restore_brings_them_back(mailbox: Mailbox) -> None:
    assert not mailbox.exists("Quarantine")

    moved = mailbox.quarantine(from_address="helpdesk@evil.example")

    assert moved.count == 2
    assert moved.dry_run is False
    assert moved.quarantine_folder == "Quarantine"
    assert mailbox.names(moved.messages) == ["phish", "phish_junk"]
    assert _raw("phish") not in mailbox.contents("INBOX")
    assert mailbox.contents("Junk") == set()
    assert mailbox.contents("Quarantine") == {_raw("phish"), _raw("phish_junk")}
    assert len(mailbox.contents("INBOX")) == 4  # the rest stayed
    quarantine_uids = mailbox.account.uids("Quarantine")
    assert sorted(m.quarantine_uid for m in moved.messages if m.quarantine_uid) == quarantine_uids
    assert [(r.message_id, r.mailbox) for r in moved.restore] == [
        ("phish-1@evil.example", "INBOX"),
        ("phish-2@evil.example", "Junk"),
    ]

    again = mailbox.quarantine(from_address="helpdesk@evil.example")
    assert again.count == 0  # nothing more to move

    restored = mailbox.restore(messages=[r.model_dump() for r in moved.restore])

    assert restored.count == 2
    assert restored.not_found == []
    assert mailbox.contents("Quarantine") == set()
    assert _raw("phish") in mailbox.contents("INBOX")
    assert mailbox.contents("Junk") == {_raw("phish_junk")}
    by_id = {r.message_id: r for r in restored.restored}
    assert by_id["<phish-1@evil.example>"].mailbox == "INBOX"
    assert by_id["<phish-1@evil.example>"].uid in mailbox.account.uids("INBOX")
    assert by_id["<phish-2@evil.example>"].uid == mailbox.account.uids("Junk")[0]
    found = mailbox.search(from_address="helpdesk@evil.example")
    assert [m.message_id for m in found.matches] == [
        "<phish-1@evil.example>",
        "<phish-2@evil.example>",
    ]

    repeated = mailbox.restore(messages=[r.model_dump() for r in moved.restore])
    assert repeated.count == 0
    assert len(repeated.not_found) == 2


@needs_dovecot
def test_quarantine_by_url_and_restore_by_message_id_to_a_given_mailbox(
    mailbox: Mailbox,
) -> None:
    moved = mailbox.quarantine(url=PHISH_URL)
    assert mailbox.names(moved.messages) == ["phish", "phish_junk"]

    restored = mailbox.restore(messages=[{"message_id": "phish-1@evil.example", "mailbox": "Junk"}])

    assert restored.count == 1
    assert restored.restored[0].mailbox == "Junk"
    assert mailbox.contents("Junk") == {_raw("phish")}
    assert mailbox.contents("Quarantine") == {_raw("phish_junk")}
    with pytest.raises(PermanentError, match="mailbox 'Sent' is not one of the configured"):
        mailbox.restore(messages=[{"message_id": "phish-2@evil.example", "mailbox": "Sent"}])
    assert mailbox.contents("Quarantine") == {_raw("phish_junk")}


@needs_dovecot
def test_a_dry_run_quarantine_or_restore_changes_nothing(mailbox: Mailbox) -> None:
    before = mailbox.state()

    pretended = mailbox.quarantine(dry_run=True, from_address="helpdesk@evil.example")

    assert pretended.dry_run is True
    assert pretended.count == 2
    assert mailbox.names(pretended.messages) == ["phish", "phish_junk"]
    assert all(m.quarantine_uid is None for m in pretended.messages)
    assert pretended.restore == []
    assert mailbox.state() == before
    assert not mailbox.exists("Quarantine")

    moved = mailbox.quarantine(from_address="helpdesk@evil.example")
    after_move = mailbox.state()
    would = mailbox.restore(dry_run=True, messages=[r.model_dump() for r in moved.restore])
    assert would.count == 2
    assert all(r.uid is None for r in would.restored)
    assert mailbox.state() == after_move


@needs_dovecot
def test_quarantine_an_explicit_list_of_messages(mailbox: Mailbox) -> None:
    folder, uid = mailbox.uids["lunch"]
    uidvalidity = mailbox.account.uidvalidity(folder)

    moved = mailbox.quarantine(
        messages=[
            {"mailbox": "inbox", "uid": uid, "uidvalidity": uidvalidity},
            {"mailbox": "INBOX", "uid": 9999},
        ]
    )

    assert mailbox.names(moved.messages) == ["lunch"]
    assert [(r.mailbox, r.uid) for r in moved.not_found] == [("INBOX", 9999)]
    assert mailbox.contents("Quarantine") == {_raw("lunch")}
    with pytest.raises(PermanentError, match="now has UIDVALIDITY") as stale:
        mailbox.quarantine(messages=[{"mailbox": "Junk", "uid": 1, "uidvalidity": 1}])
    assert stale.value.code == "uidvalidity_changed"
    with pytest.raises(PermanentError, match="mailbox 'Sent' is not one of the configured"):
        mailbox.quarantine(messages=[{"mailbox": "Sent", "uid": 1}])
    assert mailbox.contents("Junk") == {_raw("phish_junk")}


@needs_dovecot
def test_too_many_matches_are_refused_before_anything_moves(mailbox: Mailbox) -> None:
    before = mailbox.state()

    with pytest.raises(PermanentError, match="more than max_messages=2 messages match") as raised:
        mailbox.quarantine(from_address="@evil.example", max_messages=2)
    assert raised.value.code == "too_many_matches"
    with pytest.raises(PermanentError, match="more than max_messages=1"):
        mailbox.delete(subject="a", max_messages=1)

    assert mailbox.state() == before


# -- delete ------------------------------------------------------------------------------------


@needs_dovecot
def test_delete_removes_only_the_matches(mailbox: Mailbox) -> None:
    # A message the user flagged \Deleted but did not expunge is theirs to expunge, not ours.
    flagged = mailbox.uids["tips"][1]
    with mailbox.account.client() as client:
        client.select_folder("INBOX")
        client.add_flags([flagged], [b"\\Deleted"])

    pretended = mailbox.delete(dry_run=True, from_address="helpdesk@evil.example")
    assert pretended.count == 2
    assert pretended.dry_run is True
    assert len(mailbox.contents("INBOX")) == 5

    deleted = mailbox.delete(from_address="helpdesk@evil.example")

    assert deleted.count == 2
    assert mailbox.names(deleted.messages) == ["phish", "phish_junk"]
    assert mailbox.contents("Junk") == set()
    assert mailbox.contents("INBOX") == {
        _raw(name) for name in ("lookalike", "german", "lunch", "tips")
    }
    assert mailbox.account.flags("INBOX")[flagged] == {b"\\Deleted"}
    assert not mailbox.exists("Quarantine")
    assert mailbox.delete(from_address="helpdesk@evil.example").count == 0


# -- a server without MOVE ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot_without_move() -> Iterator[DovecotServer]:
    """A Dovecot that does not announce MOVE, so the connector copies and expunges."""
    capabilities = (
        "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT LITERAL+ UIDPLUS\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dovecot, "_CONFIG", dovecot._CONFIG + capabilities)
        server = dovecot.start_dovecot()
    yield server
    server.stop()


@needs_dovecot
def test_without_move_messages_are_copied_flagged_and_expunged(
    dovecot_without_move: DovecotServer,
) -> None:
    box = _mailbox_for(dovecot_without_move.add_user())
    with box.account.client() as client:
        assert not client.has_capability("MOVE")
        client.select_folder("INBOX")
        client.add_flags([box.uids["tips"][1]], [b"\\Deleted"])

    moved = box.quarantine(from_address="helpdesk@evil.example")

    assert moved.count == 2
    assert box.contents("Quarantine") == {_raw("phish"), _raw("phish_junk")}
    assert box.contents("Junk") == set()
    assert _raw("phish") not in box.contents("INBOX")
    assert _raw("tips") in box.contents("INBOX")  # flagged by the user, not expunged by us
    assert all(m.quarantine_uid is not None for m in moved.messages)

    restored = box.restore(messages=[r.model_dump() for r in moved.restore])

    assert restored.count == 2
    assert box.contents("Quarantine") == set()
    assert box.contents("Junk") == {_raw("phish_junk")}


# -- connections, credentials, health ----------------------------------------------------------


@needs_dovecot
def test_a_wrong_imap_password_is_an_auth_error_without_the_password(mailbox: Mailbox) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    params = SearchIn(subject="password")

    with pytest.raises(AuthError, match=f"refused the login as '{mailbox.account.username}'") as e:
        _run(mailbox.mail.search_messages(mailbox.ctx(password=wrong), params))

    assert wrong not in str(e.value)
    assert e.value.retryable is False
    with pytest.raises(PermanentError, match="secret 'imap_password' is not configured"):
        _run(mailbox.mail.search_messages(_ctx(), params))


@needs_dovecot
def test_an_unreachable_imap_server_is_transient(imap_account: ImapAccount) -> None:
    port = free_port()
    mail = Mail(
        Mail.Config(
            imap_host=HOST, imap_port=port, imap_security="none", imap_username="u", imap_timeout=5
        )
    )
    with pytest.raises(
        TransientError, match=re.escape(f"cannot reach IMAP server {HOST}:{port}")
    ) as e:
        _run(mail.search_messages(_ctx(imap_password="p"), SearchIn(subject="x")))
    assert e.value.retryable is True


@needs_dovecot
def test_a_missing_mailbox_is_named(imap_account: ImapAccount) -> None:
    box = _mailbox_for(imap_account, mailboxes=["INBOX", "Archive"])

    with pytest.raises(TargetNotFound, match="mailbox 'Archive' does not exist"):
        box.search(subject="password")
    with pytest.raises(TargetNotFound, match="mailbox 'Archive' does not exist"):
        _run(box.mail.health(box.ctx()))


@needs_dovecot
@pytest.mark.parametrize(("security", "port"), [("tls", "tls_port"), ("starttls", "port")])
def test_imap_over_tls_and_starttls_with_the_servers_ca(
    imap_account: ImapAccount, dovecot_server: DovecotServer, security: str, port: str
) -> None:
    box = _mailbox_for(
        imap_account,
        imap_host="127.0.0.1",
        imap_security=security,
        imap_port=getattr(dovecot_server, port),
        imap_ca_file=dovecot_server.ca_file,
    )

    assert box.names(box.search(from_address="helpdesk@evil.example").matches) == [
        "phish",
        "phish_junk",
    ]
    untrusted = Mail(box.mail.settings.model_copy(update={"imap_ca_file": None}))
    with pytest.raises(PermanentError, match="TLS certificate is not trusted") as e:
        _run(untrusted.search_messages(box.ctx(), SearchIn(subject="x")))
    assert e.value.code == "tls_untrusted"


@needs_dovecot
def test_health_logs_in_to_both_servers(mailbox: Mailbox, smtp: SmtpServer) -> None:
    settings = mailbox.mail.settings.model_copy(
        update=_smtp_mail(smtp).settings.model_dump(
            include={
                "host",
                "port",
                "security",
                "username",
                "from_address",
                "allowed_recipient_domains",
                "ca_file",
                "timeout",
            }
        )
    )
    both = Mail(settings)
    ctx = _ctx(imap_password=mailbox.account.password, smtp_password=SMTP_PASSWORD)

    report = _run(both.health(ctx))

    assert report == (
        f"IMAP {mailbox.account.username}@{HOST}:{mailbox.account.server.port} (none): "
        "INBOX 5 message(s), Junk 1 message(s), Quarantine not created yet; "
        f"SMTP {HOST}:{smtp.port} (starttls): EHLO answered, logged in as {SMTP_USER}"
    )
    assert smtp.recorder.greetings >= 1
    assert smtp.recorder.received == []
    with pytest.raises(AuthError):
        _run(both.health(_ctx(imap_password=mailbox.account.password, smtp_password="wrong")))
