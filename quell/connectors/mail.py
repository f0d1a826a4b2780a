"""``mail``: notify people over SMTP; find, quarantine, restore and delete messages over IMAP.

SMTP (``send``) goes through :mod:`aiosmtplib`. Every recipient must be at a domain listed
in ``allowed_recipient_domains``, which is checked before any connection: an alert shaped by
an attacker must not make Quell mail arbitrary addresses. Subjects and addresses never
contain a line break (header injection), and the ``Message-ID`` is derived from the step's
idempotency key, so a retried send carries the same one and is recognisable downstream.

IMAP goes through :mod:`imapclient` (synchronous) in a worker thread per call, one logged-in
session per action. Searches use IMAP SEARCH with every value from the input passed as a
quoted string or a literal by imapclient; since imapclient does not escape line breaks in a
quoted string, the input models refuse control and line-break characters in every criterion
and mailbox name, so alert data can never end an IMAP command line. The sender and the
Message-ID are then checked again exactly against each message's envelope (IMAP SEARCH only
matches substrings), and so is the subject (a case-insensitive substring on every server).

The write actions act only on the configured ``mailboxes`` (and the quarantine folder), and
refuse more than ``max_messages`` matches before changing anything: a criterion as broad as
one letter of a subject must not empty a mailbox. ``since`` alone selects whole mailboxes, so
``quarantine_messages`` and ``delete_messages`` need another criterion or an explicit list.

``quarantine_messages`` moves (MOVE, or COPY + ``\\Deleted`` + UID EXPUNGE on servers without
MOVE) to ``quarantine_folder``, created when missing. Its output says where each message now
is and carries ``restore``: the input of ``restore_messages`` that undoes it, which finds the
messages in the quarantine folder by UID and Message-ID and moves them back. Nothing is
written into the messages themselves.

Passwords are the secrets ``smtp_password`` and ``imap_password``, revealed only where they
are handed to the server and scrubbed from every error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.policy
import hashlib
import ipaddress
import re
import ssl
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import aiosmtplib
from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from quell.sdk import (
    REDACTED,
    ActionContext,
    ActionError,
    ActionInput,
    ActionOutput,
    AuthError,
    Connector,
    PermanentError,
    RiskLevel,
    SecretValue,
    TargetNotFound,
    TransientError,
    action,
)

T = TypeVar("T")

MAX_RECIPIENTS = 50
MAX_SELECTION = 1000  # messages one write action may touch (the max_messages ceiling)
_FETCH_CHUNK = 200  # UIDs per FETCH
_MOVE_CHUNK = 500  # UIDs per MOVE / COPY / STORE / EXPUNGE
DELETED = b"\\Deleted"
_TRANSIENT_IMAP_CODES = ("[UNAVAILABLE]", "[INUSE]", "[SERVERBUG]")
_POLICY = email.policy.SMTP.clone(cte_type="7bit")  # CRLF; 8-bit bodies as QP/base64

Security = Literal["none", "starttls", "tls"]

# -- validators ------------------------------------------------------------------------------


def _no_breaks(value: str) -> str:
    """Refuse control and line-separator characters: they could end a header or an IMAP line."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise ValueError(f"must not contain control characters or line breaks ({char!r})")
    return value


_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _domain(value: str) -> str:
    """``value`` as a lowercase ASCII (IDNA) domain name of two labels or more."""
    try:
        ascii_form = value.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"{value!r} is not a domain name") from None
    labels = ascii_form.split(".")
    if len(ascii_form) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
        raise ValueError(f"{value!r} is not a domain name")
    return ascii_form


def _address(value: str) -> str:
    """A bare e-mail address (``name@domain``), its domain in lowercase ASCII."""
    _no_breaks(value)
    local, at, domain = value.rpartition("@")
    if not at or len(local) > 64 or not _LOCAL_PART.match(local):
        raise ValueError(f"{value!r} is not an e-mail address (name@domain)")
    try:
        return f"{local}@{_domain(domain)}"
    except ValueError:
        raise ValueError(f"{value!r} is not an e-mail address (name@domain)") from None


def _domain_pattern(value: str) -> str:
    """``example.org`` (that domain only) or ``*.example.org`` (its subdomains only)."""
    if value.startswith("*."):
        return "*." + _domain(value[2:])
    return _domain(value)


def _sender(value: str) -> str:
    """An address, or ``@domain`` for every sender of that domain."""
    if value.startswith("@"):
        return "@" + _domain(value[1:])
    return _address(value)


def _message_id(value: str) -> str:
    """A Message-ID without its angle brackets."""
    _no_breaks(value)
    bare = value.strip().removeprefix("<").removesuffix(">")
    if not bare or any(c.isspace() or c in "<>" for c in bare):
        raise ValueError(f"{value!r} is not a Message-ID")
    return bare


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")


def _url(value: str) -> str:
    _no_breaks(value)
    if not _URL.match(value):
        raise ValueError(f"{value!r} is not a URL (scheme://...)")
    return value


def _text(value: str) -> str:
    """Body text: anything but NUL."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


EmailAddress = Annotated[str, Field(max_length=254), AfterValidator(_address)]
DomainPattern = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_domain_pattern)]
MailboxName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_breaks)]
HeaderText = Annotated[str, AfterValidator(_no_breaks)]
BodyText = Annotated[str, AfterValidator(_text)]


def _mailbox_key(name: str) -> str:
    """IMAP's INBOX is case-insensitive; every other name is not."""
    return "INBOX" if name.upper() == "INBOX" else name


def _is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- configuration ---------------------------------------------------------------------------


class MailConfig(BaseModel):
    """Where the SMTP server and the IMAP mailbox are; either or both may be configured."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "imap_host": "127.0.0.1",
                    "imap_port": 9,
                    "imap_security": "none",
                    "imap_username": "soc-reports",
                }
            ]
        },
    )

    # The SMTP server, for send.
    host: str | None = Field(None, min_length=1, max_length=253, description="SMTP server.")
    port: int | None = Field(
        None, ge=1, le=65535, description="465 for tls, 587 for starttls, 25 for none if unset."
    )
    security: Security = "starttls"
    username: str | None = Field(
        None, min_length=1, max_length=320, description="SMTP login (secret smtp_password)."
    )
    from_address: EmailAddress | None = None
    from_name: HeaderText | None = Field(None, max_length=200)
    allowed_recipient_domains: list[DomainPattern] = Field(
        default_factory=list,
        max_length=500,
        description="Domains Quell may mail (example.org; *.example.org for its subdomains).",
    )
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per SMTP command.")
    ca_file: Path | None = Field(None, description="CA bundle for the SMTP server's certificate.")
    # The IMAP mailbox, for search, quarantine, restore and delete.
    imap_host: str | None = Field(None, min_length=1, max_length=253)
    imap_port: int | None = Field(None, ge=1, le=65535, description="993 for tls, else 143.")
    imap_security: Security = "tls"
    imap_username: str | None = Field(
        None, min_length=1, max_length=320, description="IMAP login (secret imap_password)."
    )
    mailboxes: list[MailboxName] = Field(
        default_factory=lambda: ["INBOX"],
        min_length=1,
        max_length=50,
        description="The mailboxes searched; the only ones the write actions touch.",
    )
    quarantine_folder: MailboxName = "Quarantine"
    imap_timeout: float = Field(30.0, gt=0, le=300, description="Seconds per IMAP read.")
    imap_ca_file: Path | None = None
    allow_plaintext: bool = Field(
        False, description="Permit security 'none' to a host that is not loopback."
    )

    @model_validator(mode="after")
    def _check(self) -> MailConfig:
        if self.host is None and self.imap_host is None:
            raise ValueError("configure SMTP (host), IMAP (imap_host) or both")
        if self.host is not None:
            if self.from_address is None:
                raise ValueError("from_address is required when SMTP (host) is configured")
            if not self.allowed_recipient_domains:
                raise ValueError(
                    "allowed_recipient_domains is required when SMTP (host) is configured: "
                    "Quell mails only the domains listed there"
                )
        if self.imap_host is not None and self.imap_username is None:
            raise ValueError("imap_username is required when IMAP (imap_host) is configured")
        for host, security, name in (
            (self.host, self.security, "security"),
            (self.imap_host, self.imap_security, "imap_security"),
        ):
            if (
                host is not None
                and security == "none"
                and not self.allow_plaintext
                and not _is_loopback(host)
            ):
                raise ValueError(
                    f"{name} 'none' sends the password in clear text; it is allowed only to a "
                    f"loopback host, not {host!r} (set allow_plaintext to override)"
                )
        keys = [_mailbox_key(name) for name in self.mailboxes]
        if len(set(keys)) != len(keys):
            raise ValueError("mailboxes lists a mailbox twice")
        if _mailbox_key(self.quarantine_folder) in keys:
            raise ValueError(
                f"quarantine_folder {self.quarantine_folder!r} must not be one of the mailboxes"
            )
        return self

    @property
    def smtp_port(self) -> int:
        """The configured SMTP port, or the standard one for the security mode."""
        if self.port is not None:
            return self.port
        return {"tls": 465, "starttls": 587, "none": 25}[self.security]

    @property
    def imap_effective_port(self) -> int:
        """The configured IMAP port, or the standard one for the security mode."""
        if self.imap_port is not None:
            return self.imap_port
        return 993 if self.imap_security == "tls" else 143


# -- send ------------------------------------------------------------------------------------


class SendIn(ActionInput):
    """A notification: plain text, optionally with an HTML alternative."""

    to: list[EmailAddress] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    cc: list[EmailAddress] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    subject: HeaderText = Field(min_length=1, max_length=500)
    text: BodyText = Field(max_length=1_000_000, description="The plain-text body.")
    html: BodyText | None = Field(None, max_length=2_000_000, description="An HTML alternative.")

    @model_validator(mode="after")
    def _few_recipients(self) -> SendIn:
        if len({a.lower() for a in [*self.to, *self.cc]}) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients in to and cc together")
        return self

    @property
    def recipients(self) -> list[str]:
        """Every recipient once, in order (to, then cc)."""
        seen: set[str] = set()
        out = []
        for address in [*self.to, *self.cc]:
            if address.lower() not in seen:
                seen.add(address.lower())
                out.append(address)
        return out


class SendOut(ActionOutput):
    """What the SMTP server accepted."""

    message_id: str = Field(description="The Message-ID, the same for every attempt of a step.")
    accepted: list[str]
    refused: dict[str, str] = Field(
        default_factory=dict, description="Recipients the server refused, with its answer."
    )
    reply: str = Field("", description="The server's answer to the message (often a queue id).")


# -- search and selections -------------------------------------------------------------------


class MessageInfo(BaseModel):
    """A message found in a mailbox (never its body)."""

    mailbox: str
    uid: int
    uidvalidity: int
    message_id: str | None = None
    from_address: str | None = None
    subject: str | None = None
    date: dt.datetime | None = Field(None, description="The Date header.")


_CRITERIA = ("from_address", "subject", "url", "message_id", "since")
_IDENTIFYING = ("from_address", "subject", "url", "message_id")


class _Criteria(ActionInput):
    """What to look for; the criteria given must all match."""

    from_address: Annotated[str, Field(max_length=254), AfterValidator(_sender)] | None = Field(
        None, description="The sender's address, or @domain for any sender of that domain."
    )
    subject: HeaderText | None = Field(
        None, min_length=1, max_length=500, description="Part of the subject (any case)."
    )
    url: Annotated[str, Field(max_length=4096), AfterValidator(_url)] | None = Field(
        None, description="A URL the body contains."
    )
    message_id: Annotated[str, Field(max_length=998), AfterValidator(_message_id)] | None = Field(
        None, description="The Message-ID, with or without its angle brackets."
    )
    since: dt.date | None = Field(None, description="Received on or after this day.")

    def given(self) -> list[str]:
        """The names of the criteria given."""
        return [name for name in _CRITERIA if getattr(self, name) is not None]

    def search_keys(self) -> list[Any]:
        """The IMAP SEARCH keys (imapclient quotes every value or sends it as a literal)."""
        keys: list[Any] = ["NOT", "DELETED"]
        if self.from_address is not None:
            keys += ["FROM", self.from_address]
        if self.subject is not None:
            keys += ["SUBJECT", self.subject]
        if self.url is not None:
            escaped = self.url.replace("&", "&amp;")  # as an HTML body writes it
            if escaped == self.url:
                keys += ["BODY", self.url]
            else:
                keys += ["OR", ["BODY", self.url], ["BODY", escaped]]
        if self.message_id is not None:
            keys += ["HEADER", "Message-ID", self.message_id]
        if self.since is not None:
            keys += ["SINCE", self.since]
        return keys

    @property
    def charset(self) -> str | None:
        """UTF-8 when a value is not ASCII (the server then needs to be told)."""
        values = (self.from_address, self.subject, self.url, self.message_id)
        return None if all(v is None or v.isascii() for v in values) else "UTF-8"

    def accepts(self, info: MessageInfo, senders: Sequence[str]) -> bool:
        """Whether the message really matches (SEARCH matches substrings of headers)."""
        if self.from_address is not None:
            wanted = self.from_address.lower()
            if wanted.startswith("@"):
                if not any(s.lower().rpartition("@")[2] == wanted[1:] for s in senders):
                    return False
            elif wanted not in (s.lower() for s in senders):
                return False
        if self.subject is not None and _fold(self.subject) not in _fold(info.subject or ""):
            return False
        if self.message_id is not None:
            found = (info.message_id or "").strip().removeprefix("<").removesuffix(">")
            if found != self.message_id:
                return False
        return True


class SearchIn(_Criteria):
    """Find messages in the configured mailboxes; at least one criterion."""

    limit: int = Field(100, ge=1, le=MAX_SELECTION, description="At most this many matches.")

    @model_validator(mode="after")
    def _one_criterion(self) -> SearchIn:
        if not self.given():
            raise ValueError(f"give at least one criterion: {', '.join(_CRITERIA)}")
        return self


class SearchOut(ActionOutput):
    """The matches, mailbox by mailbox in configured order, by UID."""

    count: int
    truncated: bool = Field(description="More messages match than limit.")
    matches: list[MessageInfo]


class MessageRef(BaseModel):
    """One message by its place: mailbox and UID (and the UIDVALIDITY the UID belongs to)."""

    model_config = ConfigDict(extra="forbid")

    mailbox: MailboxName
    uid: int = Field(ge=1)
    uidvalidity: int | None = Field(None, ge=1, description="Refused when the mailbox has other.")


class _Selection(_Criteria):
    """Criteria, or an explicit list of messages; never both."""

    messages: list[MessageRef] | None = Field(None, min_length=1, max_length=MAX_SELECTION)
    max_messages: int = Field(
        100,
        ge=1,
        le=MAX_SELECTION,
        description="Refuse, changing nothing, when more messages than this match.",
    )

    @model_validator(mode="after")
    def _criteria_or_messages(self) -> _Selection:
        given = self.given()
        if self.messages is not None:
            if given:
                raise ValueError(f"give criteria or messages, not both (got {', '.join(given)})")
            return self
        if not given:
            raise ValueError(
                f"give at least one criterion ({', '.join(_IDENTIFYING)}, since) or messages"
            )
        if given == ["since"]:
            raise ValueError(
                "since alone selects every message since that day; add from_address, subject, "
                "url or message_id, or list the messages"
            )
        return self


_SELECTION_EXAMPLES: Any = [
    {"from_address": "billing@evil.example", "subject": "Invoice overdue"},
    {"url": "https://evil.example/login"},
]


class QuarantineIn(_Selection):
    """Move the selected messages to the quarantine folder."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": _SELECTION_EXAMPLES})


class DeleteIn(_Selection):
    """Delete the selected messages for good (\\Deleted and expunged)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": _SELECTION_EXAMPLES})


class RestoreItem(BaseModel):
    """A quarantined message to put back: its quarantine UID, its Message-ID, or both."""

    model_config = ConfigDict(extra="forbid")

    message_id: Annotated[str, Field(max_length=998), AfterValidator(_message_id)] | None = None
    quarantine_uid: int | None = Field(None, ge=1)
    mailbox: MailboxName | None = Field(
        None, description="Where to put it (one of the mailboxes; the first one if unset)."
    )

    @model_validator(mode="after")
    def _identified(self) -> RestoreItem:
        if self.message_id is None and self.quarantine_uid is None:
            raise ValueError("give message_id, quarantine_uid or both")
        return self


class RestoreIn(ActionInput):
    """Put quarantined messages back; ``quarantine_messages`` returns this as ``restore``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"messages": [{"message_id": "<a1b2@evil.example>"}]}]},
    )

    messages: list[RestoreItem] = Field(min_length=1, max_length=MAX_SELECTION)


class QuarantinedMessage(MessageInfo):
    """A message moved (or, in a dry run, to be moved) to the quarantine folder."""

    quarantine_uid: int | None = Field(None, description="Its UID in the quarantine folder.")


class QuarantineOut(ActionOutput):
    """What moved where; ``restore`` is the input of ``restore_messages`` that undoes it."""

    count: int
    dry_run: bool = False
    quarantine_folder: str
    messages: list[QuarantinedMessage]
    not_found: list[MessageRef] = Field(default_factory=list)
    restore: list[RestoreItem] = Field(default_factory=list)


class RestoredMessage(BaseModel):
    """A message moved back out of the quarantine folder."""

    message_id: str | None
    mailbox: str
    uid: int | None = Field(None, description="Its new UID in the mailbox.")
    quarantine_uid: int


class RestoreOut(ActionOutput):
    """What moved back; ``not_found``: items no longer (or never) in the quarantine folder."""

    count: int
    dry_run: bool = False
    restored: list[RestoredMessage]
    not_found: list[RestoreItem] = Field(default_factory=list)


class DeleteOut(ActionOutput):
    """What was deleted (or, in a dry run, would be)."""

    count: int
    dry_run: bool = False
    messages: list[MessageInfo]
    not_found: list[MessageRef] = Field(default_factory=list)


# -- helpers ---------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """For case-insensitive substring matching: NFKC, casefolded, whitespace runs as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _decode(raw: Any) -> str | None:
    """An envelope string (bytes, maybe RFC 2047 encoded) as text on one line."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    with contextlib.suppress(HeaderParseError, UnicodeError, LookupError, ValueError):
        text = str(make_header(decode_header(text)))
    return " ".join(text.split())


def _senders(envelope: Any) -> list[str]:
    """The From addresses of an envelope, as ``mailbox@host``."""
    found = []
    for address in getattr(envelope, "from_", None) or ():
        mailbox, host = getattr(address, "mailbox", None), getattr(address, "host", None)
        if mailbox and host:
            found.append(f"{_decode(mailbox)}@{_decode(host)}")
    return found


def _info(mailbox: str, uid: int, uidvalidity: int, envelope: Any) -> tuple[MessageInfo, list[str]]:
    senders = _senders(envelope)
    date = getattr(envelope, "date", None)
    if isinstance(date, dt.datetime) and date.tzinfo is not None:
        date = date.astimezone(dt.UTC)
    info = MessageInfo(
        mailbox=mailbox,
        uid=uid,
        uidvalidity=uidvalidity,
        message_id=_decode(getattr(envelope, "message_id", None)) or None,
        from_address=senders[0] if senders else None,
        subject=_decode(getattr(envelope, "subject", None)),
        date=date if isinstance(date, dt.datetime) else None,
    )
    return info, senders


def _bare_id(message_id: str | None) -> str | None:
    if message_id is None:
        return None
    return message_id.strip().removeprefix("<").removesuffix(">")


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _describe(exc: BaseException, secret: SecretValue | None) -> str:
    """One line about ``exc`` that never contains the secret."""
    detail = str(exc).strip()
    if detail[:2] in ("b'", 'b"') and detail[-1:] == detail[1]:
        detail = detail[2:-1]  # imapclient wraps the server's bytes with str()
    text = " ".join(detail.split()) or type(exc).__name__
    return _scrub(text, secret)


def _scrub(text: str, secret: SecretValue | None) -> str:
    value = secret.reveal() if secret is not None else ""
    return text.replace(value, REDACTED) if value else text


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first exception of its cause/context chain that is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _logout(client: Any) -> None:
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the session is over either way
        with contextlib.suppress(Exception):
            client.shutdown()


def _tls_context(ca_file: Path | None, field: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(
            f"cannot load {field} {str(ca_file)!r}: {exc.strerror or exc}", code="bad_ca_file"
        ) from None


# -- the connector ---------------------------------------------------------------------------


class Mail(Connector):
    """E-mail: notifications over SMTP; search, quarantine, restore and delete over IMAP."""

    name = "mail"
    title = "Mail (SMTP notifications, IMAP quarantine)"
    Config = MailConfig
    secrets = ("smtp_password", "imap_password")

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = (
            config
            if isinstance(config, MailConfig)
            else MailConfig.model_validate(config.model_dump() if config is not None else {})
        )

    # -- actions ---------------------------------------------------------------------------

    @action("send", risk=RiskLevel.LOW, idempotent=False, title="Send an e-mail notification")
    async def send(self, ctx: ActionContext, params: SendIn) -> SendOut:
        """Send a notification to recipients at the allowed domains; returns its Message-ID.

        The Message-ID is derived from the step's idempotency key: SMTP has no way to ask
        whether an earlier attempt was delivered, but a repeated one carries the same ID.
        """
        settings = self._smtp_settings()
        recipients = params.recipients
        outside = [a for a in recipients if not self._allowed(a)]
        if outside:
            raise PermanentError(
                f"recipient {outside[0]} is not at an allowed domain "
                f"(allowed_recipient_domains: {', '.join(settings.allowed_recipient_domains)})",
                code="recipient_not_allowed",
                details={"recipients": outside},
            )
        message_id = self._message_id(ctx)
        message = self._message(params, message_id)
        password = self._password(ctx, "smtp_password") if settings.username else None
        with self._smtp_errors(password):
            smtp = await self._smtp_connect(password)
            try:
                errors, reply = await smtp.sendmail(
                    settings.from_address or "", recipients, message.as_bytes()
                )
            finally:
                await _smtp_quit(smtp)
        refused = {address: f"{r.code} {r.message}" for address, r in errors.items()}
        accepted = [address for address in recipients if address not in refused]
        ctx.log.info(
            "mail_sent", message_id=message_id, accepted=len(accepted), refused=len(refused)
        )
        return SendOut(message_id=message_id, accepted=accepted, refused=refused, reply=reply)

    @action(
        "search_messages",
        risk=RiskLevel.READ,
        idempotent=True,
        title="Find messages like a reported one",
    )
    async def search_messages(self, ctx: ActionContext, params: SearchIn) -> SearchOut:
        """Find messages by sender, subject, URL, Message-ID or day, without their bodies."""
        matches = await self._imap(ctx, partial(self._find, params, params.limit + 1))
        truncated = len(matches) > params.limit
        matches = matches[: params.limit]
        return SearchOut(count=len(matches), truncated=truncated, matches=matches)

    @action(
        "quarantine_messages",
        risk=RiskLevel.MEDIUM,
        idempotent=True,
        supports_dry_run=True,
        reverts="restore_messages",
        title="Move messages to the quarantine folder",
    )
    async def quarantine_messages(self, ctx: ActionContext, params: QuarantineIn) -> QuarantineOut:
        """Move matching messages to the quarantine folder (created when missing).

        Repeating it moves nothing more: what it moved is no longer where it searches.
        """
        out = await self._imap(ctx, partial(self._quarantine, params, ctx.dry_run))
        if not ctx.dry_run:
            ctx.log.info(
                "mail_quarantined", count=out.count, folder=self.settings.quarantine_folder
            )
        return out

    @action(
        "restore_messages",
        risk=RiskLevel.LOW,
        idempotent=True,
        supports_dry_run=True,
        title="Move quarantined messages back",
    )
    async def restore_messages(self, ctx: ActionContext, params: RestoreIn) -> RestoreOut:
        """Move messages from the quarantine folder back to their mailbox.

        A message no longer in the quarantine folder is listed in ``not_found``, not an error,
        so repeating a restore changes nothing more.
        """
        out = await self._imap(ctx, partial(self._restore, params, ctx.dry_run))
        if not ctx.dry_run:
            ctx.log.info("mail_restored", count=out.count, not_found=len(out.not_found))
        return out

    @action(
        "delete_messages",
        risk=RiskLevel.HIGH,
        idempotent=True,
        supports_dry_run=True,
        title="Delete messages for good",
    )
    async def delete_messages(self, ctx: ActionContext, params: DeleteIn) -> DeleteOut:
        """Flag matching messages \\Deleted and expunge them (only them, where UIDPLUS allows)."""
        out = await self._imap(ctx, partial(self._delete, params, ctx.dry_run))
        if not ctx.dry_run:
            ctx.log.info("mail_deleted", count=out.count)
        return out

    async def health(self, ctx: ActionContext) -> str:
        """IMAP: log in and count the mailboxes; SMTP: connect, EHLO, log in."""
        parts = []
        if self.settings.imap_host is not None:
            parts.append(await self._imap(ctx, self._imap_health))
        if self.settings.host is not None:
            parts.append(await self._smtp_health(ctx))
        return "; ".join(parts)

    # -- SMTP ------------------------------------------------------------------------------

    def _smtp_settings(self) -> MailConfig:
        if self.settings.host is None:
            raise PermanentError(
                "SMTP is not configured for this mail connector (set host)", code="not_configured"
            )
        return self.settings

    def _allowed(self, address: str) -> bool:
        domain = address.rpartition("@")[2].lower()
        for pattern in self.settings.allowed_recipient_domains:
            if pattern.startswith("*."):
                if domain.endswith(pattern[1:]):
                    return True
            elif domain == pattern:
                return True
        return False

    def _message_id(self, ctx: ActionContext) -> str:
        digest = hashlib.sha256(ctx.step_idempotency_key.encode()).hexdigest()[:32]
        domain = (self.settings.from_address or "@quell.invalid").rpartition("@")[2]
        return f"<quell.{digest}@{domain}>"

    def _message(self, params: SendIn, message_id: str) -> EmailMessage:
        settings = self.settings
        message = EmailMessage(policy=_POLICY)
        message["From"] = Address(
            display_name=settings.from_name or "", addr_spec=settings.from_address or ""
        )
        message["To"] = ", ".join(params.to)
        if params.cc:
            message["Cc"] = ", ".join(params.cc)
        message["Subject"] = params.subject
        message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
        message.set_content(params.text)
        if params.html is not None:
            message.add_alternative(params.html, subtype="html")
        return message

    async def _smtp_connect(self, password: SecretValue | None) -> aiosmtplib.SMTP:
        """A connected (and, with a username, logged-in) SMTP client."""
        settings = self.settings
        context = _tls_context(settings.ca_file, "ca_file") if settings.security != "none" else None
        smtp = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.smtp_port,
            use_tls=settings.security == "tls",
            start_tls=settings.security == "starttls",
            tls_context=context,
            timeout=settings.timeout,
        )
        try:
            await smtp.connect()
            if settings.username is not None and password is not None:
                await smtp.login(settings.username, password.reveal())
        except BaseException as exc:
            protocol = smtp.protocol
            smtp.close()
            if not isinstance(exc, asyncio.CancelledError):
                await _gone(protocol)
            raise
        return smtp

    async def _smtp_health(self, ctx: ActionContext) -> str:
        settings = self.settings
        password = self._password(ctx, "smtp_password") if settings.username else None
        with self._smtp_errors(password):
            smtp = await self._smtp_connect(password)
            try:
                await smtp.ehlo()
            finally:
                await _smtp_quit(smtp)
        login = f", logged in as {settings.username}" if settings.username else ""
        return f"SMTP {self._smtp_where()} ({settings.security}): EHLO answered{login}"

    def _smtp_where(self) -> str:
        return f"{self.settings.host}:{self.settings.smtp_port}"

    @contextlib.contextmanager
    def _smtp_errors(self, password: SecretValue | None) -> Iterator[None]:
        """Turn what aiosmtplib and the network raise into the SDK's errors."""
        try:
            yield
        except ActionError:
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise self._smtp_failure(exc, password) from None

    def _smtp_failure(self, exc: BaseException, password: SecretValue | None) -> ActionError:
        where = f"SMTP server {self._smtp_where()}"
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            text = _scrub(
                f"{where} refused the login as {self.settings.username!r}: "
                f"{exc.code} {exc.message}",
                password,
            )
            if 400 <= exc.code < 500:
                return TransientError(text, code="auth_unavailable")
            return AuthError(text)
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            answers = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            text = _scrub(f"{where} refused every recipient: {answers}", password)
            if all(400 <= r.code < 500 for r in exc.recipients):
                return TransientError(text, code="recipients_deferred")
            return PermanentError(text, code="recipients_refused")
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            text = _scrub(f"{where} answered {exc.code} {exc.message}", password)
            if 400 <= exc.code < 500:
                return TransientError(text, details={"smtp_code": exc.code})
            return PermanentError(text, details={"smtp_code": exc.code})
        untrusted = _cause(exc, ssl.SSLCertVerificationError)
        if isinstance(untrusted, ssl.SSLCertVerificationError):
            return PermanentError(
                f"{where}: its TLS certificate is not trusted ({untrusted.verify_message}); "
                "set ca_file to the CA that signed it",
                code="tls_untrusted",
            )
        tls = _cause(exc, ssl.SSLError)
        if tls is not None:
            return PermanentError(
                f"TLS with {where} failed: {_describe(tls, password)}", code="tls_failed"
            )
        if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
            return TransientError(
                f"{where}: no answer within {self.settings.timeout:g}s", code="timeout"
            )
        if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
            return TransientError(
                f"cannot reach {where}: {_describe(exc, password)}", code="unreachable"
            )
        if isinstance(exc, OSError):
            return TransientError(
                f"cannot reach {where}: {_describe(exc, password)}", code="unreachable"
            )
        # What the server does not offer (AUTH, STARTTLS, a mechanism): configuration.
        return PermanentError(f"{where}: {_describe(exc, password)}", code="smtp_failed")

    # -- IMAP: sessions --------------------------------------------------------------------

    async def _imap(self, ctx: ActionContext, work: Callable[[Any], T]) -> T:
        """Run ``work(client)`` with a logged-in IMAP client, in a worker thread."""
        if self.settings.imap_host is None:
            raise PermanentError(
                "IMAP is not configured for this mail connector (set imap_host)",
                code="not_configured",
            )
        password = self._password(ctx, "imap_password")
        return await asyncio.to_thread(self._imap_session, password, work)

    def _imap_session(self, password: SecretValue, work: Callable[[Any], T]) -> T:
        client: Any = None
        try:
            client = self._imap_login(password)
            return work(client)
        except ActionError:
            raise
        except (IMAPClientError, OSError, EOFError) as exc:
            raise self._imap_failure(exc, password) from None
        finally:
            if client is not None:
                _logout(client)

    def _imap_login(self, password: SecretValue) -> Any:
        settings = self.settings
        timeout = SocketTimeout(connect=settings.imap_timeout, read=settings.imap_timeout)
        context = (
            _tls_context(settings.imap_ca_file, "imap_ca_file")
            if settings.imap_security != "none"
            else None
        )
        client = IMAPClient(
            settings.imap_host,
            port=settings.imap_effective_port,
            ssl=settings.imap_security == "tls",
            ssl_context=context,
            timeout=timeout,
        )
        client.normalise_times = False  # keep the Date header's zone (made UTC by _info)
        try:
            if settings.imap_security == "starttls":
                client.starttls(context)
            try:
                client.login(settings.imap_username, password.reveal())
            except LoginError as exc:
                detail = _describe(exc, password)
                where = f"IMAP server {self._imap_where()}"
                if "[UNAVAILABLE]" in detail:  # RFC 5530: the server cannot check it now
                    raise TransientError(
                        f"{where} cannot authenticate now: {detail}", code="auth_unavailable"
                    ) from None
                raise AuthError(
                    f"{where} refused the login as {settings.imap_username!r}: {detail}"
                ) from None
        except BaseException:
            _logout(client)
            raise
        return client

    def _imap_where(self) -> str:
        return f"{self.settings.imap_host}:{self.settings.imap_effective_port}"

    def _imap_failure(self, exc: BaseException, password: SecretValue) -> ActionError:
        where = f"IMAP server {self._imap_where()}"
        detail = _describe(exc, password)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentError(
                f"{where}: its TLS certificate is not trusted ({exc.verify_message}); "
                "set imap_ca_file to the CA that signed it",
                code="tls_untrusted",
            )
        if isinstance(exc, ssl.SSLError):
            return PermanentError(f"TLS with {where} failed: {detail}", code="tls_failed")
        if isinstance(exc, TimeoutError):
            return TransientError(
                f"{where}: no answer within {self.settings.imap_timeout:g}s", code="timeout"
            )
        if isinstance(exc, IMAPClientAbortError | OSError | EOFError):
            return TransientError(f"cannot reach {where}: {detail}", code="unreachable")
        if any(code in detail for code in _TRANSIENT_IMAP_CODES):
            return TransientError(f"{where} failed: {detail}")
        return PermanentError(f"{where} failed: {detail}", code="imap_failed")

    def _password(self, ctx: ActionContext, name: str) -> SecretValue:
        secret = ctx.secrets.get(name)
        if secret is None:
            raise PermanentError(
                f"secret {name!r} is not configured for this mail connector",
                code="secret_missing",
            )
        return secret

    # -- IMAP: the work (each runs in the worker thread) -----------------------------------

    def _select(self, client: Any, mailbox: str, *, readonly: bool) -> int:
        """Select ``mailbox``; its UIDVALIDITY. TargetNotFound names it when it is missing."""
        try:
            status = client.select_folder(mailbox, readonly=readonly)
        except IMAPClientError as exc:
            if "[NONEXISTENT]" in str(exc) or not client.folder_exists(mailbox):
                raise TargetNotFound(
                    f"mailbox {mailbox!r} does not exist on IMAP server {self._imap_where()}",
                    details={"mailbox": mailbox},
                ) from None
            raise
        return int(status[b"UIDVALIDITY"])

    def _configured(self, mailbox: str) -> str:
        """``mailbox`` as configured; PermanentError when it is not one of the mailboxes."""
        for name in self.settings.mailboxes:
            if _mailbox_key(name) == _mailbox_key(mailbox):
                return name
        raise PermanentError(
            f"mailbox {mailbox!r} is not one of the configured mailboxes "
            f"({', '.join(self.settings.mailboxes)})",
            code="mailbox_not_allowed",
            details={"mailbox": mailbox},
        )

    def _envelopes(
        self, client: Any, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> Iterator[tuple[MessageInfo, list[str]]]:
        """Each existing message of ``uids`` with its senders, fetched in chunks, by UID."""
        for chunk in _chunks(sorted(uids), _FETCH_CHUNK):
            data = client.fetch(chunk, ["ENVELOPE"])
            for uid in chunk:
                envelope = data.get(uid, {}).get(b"ENVELOPE")
                if envelope is not None:  # else expunged meanwhile
                    yield _info(mailbox, uid, uidvalidity, envelope)

    def _find(self, criteria: _Criteria, stop_after: int, client: Any) -> list[MessageInfo]:
        """Up to ``stop_after`` matches in the configured mailboxes (examined read-only)."""
        found: list[MessageInfo] = []
        keys, charset = criteria.search_keys(), criteria.charset
        for mailbox in self.settings.mailboxes:
            uidvalidity = self._select(client, mailbox, readonly=True)
            uids = [int(uid) for uid in client.search(keys, charset=charset)]
            for info, senders in self._envelopes(client, mailbox, uidvalidity, uids):
                if criteria.accepts(info, senders):
                    found.append(info)
                    if len(found) >= stop_after:
                        return found
        return found

    def _listed(
        self, refs: Sequence[MessageRef], client: Any
    ) -> tuple[list[MessageInfo], list[MessageRef]]:
        """The listed messages that exist, and those that do not."""
        found: list[MessageInfo] = []
        missing: list[MessageRef] = []
        groups: dict[str, list[MessageRef]] = {}
        for ref in refs:
            groups.setdefault(self._configured(ref.mailbox), []).append(ref)
        for mailbox, group in groups.items():
            uidvalidity = self._select(client, mailbox, readonly=True)
            stale = [r for r in group if r.uidvalidity not in (None, uidvalidity)]
            if stale:
                raise PermanentError(
                    f"mailbox {mailbox!r} now has UIDVALIDITY {uidvalidity}, not "
                    f"{stale[0].uidvalidity}: its UIDs no longer name the same messages",
                    code="uidvalidity_changed",
                    details={"mailbox": mailbox},
                )
            existing = {
                info.uid: info
                for info, _ in self._envelopes(client, mailbox, uidvalidity, [r.uid for r in group])
            }
            seen: set[int] = set()
            for ref in group:
                if ref.uid in seen:
                    continue  # listed twice: once is enough
                seen.add(ref.uid)
                if ref.uid in existing:
                    found.append(existing[ref.uid])
                else:
                    missing.append(ref)
        return found, missing

    def _selection(
        self, params: _Selection, client: Any
    ) -> tuple[list[MessageInfo], list[MessageRef]]:
        """What a write action acts on; refused, changing nothing, when too much matches."""
        if params.messages is not None:
            found, missing = self._listed(params.messages, client)
        else:
            found, missing = self._find(params, params.max_messages + 1, client), []
        if len(found) > params.max_messages:
            raise PermanentError(
                f"more than max_messages={params.max_messages} messages match; nothing was "
                "changed: narrow the criteria or raise max_messages",
                code="too_many_matches",
            )
        return found, missing

    def _by_mailbox(self, found: Iterable[MessageInfo]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for info in found:
            groups.setdefault(info.mailbox, []).append(info.uid)
        return groups

    def _move(self, client: Any, uids: Sequence[int], target: str) -> None:
        """Move ``uids`` of the selected mailbox to ``target``: MOVE, else COPY and expunge."""
        for chunk in _chunks(uids, _MOVE_CHUNK):
            if client.has_capability("MOVE"):
                client.move(chunk, target)
            else:
                client.copy(chunk, target)
                client.add_flags(chunk, [DELETED], silent=True)
                self._expunge(client, chunk)

    def _expunge(self, client: Any, uids: list[int]) -> None:
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)  # only these, not what else is flagged \Deleted
        else:
            client.expunge()

    def _uidnext(self, client: Any, folder: str) -> int:
        return int(client.folder_status(folder, [b"UIDNEXT"])[b"UIDNEXT"])

    def _arrivals(
        self, client: Any, folder: str, since_uid: int, moved: Sequence[tuple[str | None, Any]]
    ) -> dict[Any, int]:
        """Where the ``moved`` messages (Message-ID, key) landed in ``folder``: key -> UID.

        Messages get UIDs from ``since_uid`` (UIDNEXT before the move) on, in order; they are
        told apart by Message-ID, and those without one by that order.
        """
        self._select(client, folder, readonly=True)
        uids = sorted(
            int(uid) for uid in client.search(["UID", f"{since_uid}:*"]) if uid >= since_uid
        )
        pool: dict[str | None, list[int]] = {}
        for info, _ in self._envelopes(client, folder, 0, uids):
            pool.setdefault(_bare_id(info.message_id), []).append(info.uid)
        located = {}
        for message_id, key in moved:
            candidates = pool.get(_bare_id(message_id))
            if candidates:
                located[key] = candidates.pop(0)
        return located

    def _ensure_folder(self, client: Any, folder: str) -> None:
        if client.folder_exists(folder):
            return
        try:
            client.create_folder(folder)
        except IMAPClientError:
            if not client.folder_exists(folder):  # else created meanwhile by someone else
                raise
        with contextlib.suppress(IMAPClientError):
            client.subscribe_folder(folder)

    def _quarantine(self, params: QuarantineIn, dry_run: bool, client: Any) -> QuarantineOut:
        folder = self.settings.quarantine_folder
        found, missing = self._selection(params, client)
        messages = [QuarantinedMessage(**info.model_dump()) for info in found]
        if dry_run or not found:
            return QuarantineOut(
                count=len(found),
                dry_run=dry_run,
                quarantine_folder=folder,
                messages=messages,
                not_found=missing,
            )
        self._ensure_folder(client, folder)
        since_uid = self._uidnext(client, folder)
        for mailbox, uids in self._by_mailbox(found).items():
            self._select(client, mailbox, readonly=False)
            self._move(client, uids, folder)
        located = self._arrivals(
            client, folder, since_uid, [(m.message_id, (m.mailbox, m.uid)) for m in messages]
        )
        for message in messages:
            message.quarantine_uid = located.get((message.mailbox, message.uid))
        restore = [
            RestoreItem(
                message_id=_bare_id(m.message_id),
                quarantine_uid=m.quarantine_uid,
                mailbox=m.mailbox,
            )
            for m in messages
            if m.message_id is not None or m.quarantine_uid is not None
        ]
        return QuarantineOut(
            count=len(messages),
            quarantine_folder=folder,
            messages=messages,
            not_found=missing,
            restore=restore,
        )

    def _restore(self, params: RestoreIn, dry_run: bool, client: Any) -> RestoreOut:
        folder = self.settings.quarantine_folder
        targets = [
            self._configured(item.mailbox) if item.mailbox is not None else None
            for item in params.messages
        ]
        if not client.folder_exists(folder):
            return RestoreOut(count=0, dry_run=dry_run, restored=[], not_found=params.messages)
        uidvalidity = self._select(client, folder, readonly=dry_run)
        claimed: dict[int, tuple[str, MessageInfo]] = {}  # quarantine UID -> (target, message)
        default = self.settings.mailboxes[0]
        pending: list[tuple[RestoreItem, str]] = []
        by_uid = {
            info.uid: info
            for info, _ in self._envelopes(
                client,
                folder,
                uidvalidity,
                [i.quarantine_uid for i in params.messages if i.quarantine_uid is not None],
            )
        }
        for item, target in zip(params.messages, targets, strict=True):
            destination = target or default
            info = by_uid.get(item.quarantine_uid or 0)
            if (
                info is not None
                and info.uid not in claimed
                and (item.message_id is None or _bare_id(info.message_id) == item.message_id)
            ):
                claimed[info.uid] = (destination, info)
            else:
                pending.append((item, destination))
        not_found: list[RestoreItem] = []
        for item, destination in pending:
            hits: list[MessageInfo] = []
            if item.message_id is not None:
                criteria = _Criteria(message_id=item.message_id)
                found = client.search(criteria.search_keys(), charset=criteria.charset)
                uids = [int(u) for u in found]
                hits = [
                    info
                    for info, senders in self._envelopes(client, folder, uidvalidity, uids)
                    if criteria.accepts(info, senders) and info.uid not in claimed
                ]
            if not hits:
                not_found.append(item)
            for info in hits:
                claimed[info.uid] = (destination, info)
        groups: dict[str, list[int]] = {}
        for uid, (destination, _) in sorted(claimed.items()):
            groups.setdefault(destination, []).append(uid)
        located: dict[Any, int] = {}
        if not dry_run:
            starts = {target: self._uidnext(client, target) for target in groups}
            for target, uids in groups.items():
                self._move(client, uids, target)
            for target, uids in groups.items():
                located |= self._arrivals(
                    client,
                    target,
                    starts[target],
                    [(claimed[uid][1].message_id, uid) for uid in uids],
                )
        restored = [
            RestoredMessage(
                message_id=info.message_id,
                mailbox=destination,
                uid=located.get(uid),
                quarantine_uid=uid,
            )
            for uid, (destination, info) in sorted(claimed.items())
        ]
        return RestoreOut(
            count=len(restored), dry_run=dry_run, restored=restored, not_found=not_found
        )

    def _delete(self, params: DeleteIn, dry_run: bool, client: Any) -> DeleteOut:
        found, missing = self._selection(params, client)
        if not dry_run:
            for mailbox, uids in self._by_mailbox(found).items():
                self._select(client, mailbox, readonly=False)
                for chunk in _chunks(uids, _MOVE_CHUNK):
                    client.add_flags(chunk, [DELETED], silent=True)
                    self._expunge(client, chunk)
        return DeleteOut(count=len(found), dry_run=dry_run, messages=found, not_found=missing)

    def _imap_health(self, client: Any) -> str:
        settings = self.settings
        counts = []
        for mailbox in [*settings.mailboxes, settings.quarantine_folder]:
            if not client.folder_exists(mailbox):
                if mailbox == settings.quarantine_folder:
                    counts.append(f"{mailbox} not created yet")
                    continue
                raise TargetNotFound(
                    f"mailbox {mailbox!r} does not exist on IMAP server {self._imap_where()}",
                    details={"mailbox": mailbox},
                )
            status = client.folder_status(mailbox, [b"MESSAGES"])
            counts.append(f"{mailbox} {int(status[b'MESSAGES'])} message(s)")
        return (
            f"IMAP {settings.imap_username}@{self._imap_where()} ({settings.imap_security}): "
            + ", ".join(counts)
        )


async def _smtp_quit(smtp: aiosmtplib.SMTP) -> None:
    """End the session politely; a failure to say goodbye loses nothing."""
    protocol = smtp.protocol
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()
    await _gone(protocol)


async def _gone(protocol: Any) -> None:
    """Wait, briefly and bounded, until a closed connection is really gone: a TLS session's
    shutdown takes a few turns of the loop, and a loop that ends first leaves its socket open."""
    for _ in range(100):  # at most about a second
        if protocol is None or getattr(protocol, "transport", None) is None:
            return
        await asyncio.sleep(0.01)


__all__ = [
    "DeleteIn",
    "DeleteOut",
    "Mail",
    "MailConfig",
    "MessageInfo",
    "MessageRef",
    "QuarantineIn",
    "QuarantineOut",
    "QuarantinedMessage",
    "RestoreIn",
    "RestoreItem",
    "RestoreOut",
    "RestoredMessage",
    "SearchIn",
    "SearchOut",
    "SendIn",
    "SendOut",
]
