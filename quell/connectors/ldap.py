"""``ldap``: accounts in an OpenLDAP or Active Directory-style directory.

The connector binds as a service account (``bind_dn`` and the ``bind_password`` secret), finds
an account by its login name with ``user_filter`` (the name is escaped as RFC 4515 says, so a
name such as ``*)(uid=*`` matches nothing but itself), and acts on that one entry:

- ``disable_account`` / ``enable_account``: in ``openldap`` mode, ``disable_attribute`` set to
  ``disable_value`` and deleted again; by default ``pwdAccountLockedTime: 000001010000Z``,
  which the ppolicy overlay reads as "locked until an administrator unlocks it" (simple binds
  then fail). In ``ad`` mode, the ACCOUNTDISABLE bit (0x2) of ``userAccountControl``, set or
  cleared with every other bit kept.
- ``reset_password``: a new random password (``secrets.token_urlsafe``), set with the LDAP
  Password Modify operation (OpenLDAP hashes it itself) or, in ``ad`` mode, written to
  ``unicodePwd`` (which Active Directory accepts only over TLS). The password is never in the
  action's output, its logs or its errors: with ``password_delivery: file`` it is written to a
  new file (mode 0600) in ``password_delivery_dir`` and the output gives the file's path; with
  ``none`` it is set and forgotten, which locks the account out until a help desk sets another.
- ``add_to_quarantine_group`` / ``remove_from_quarantine_group``: the account in or out of
  the one group named by ``quarantine_group_dn`` (a playbook cannot name another group), by
  its DN in ``member`` or its login name in ``memberUid``.
- ``get_groups``: the groups that list the account (``member``, ``uniqueMember`` or
  ``memberUid``).

Writes are idempotent: disabling a disabled account, or adding a member twice, succeeds with
``changed: false``. Every write supports a dry run, which looks the account up and says what
would change. ldap3 is synchronous: each call opens its own connection in a worker thread
(``asyncio.to_thread``), with StartTLS or LDAPS when configured, checking the server's
certificate and host name, and closes it at the end. Referrals are never followed, so the
service account's password is only ever sent to the configured server.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import ssl
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from quell.sdk import (
    ActionContext,
    ActionError,
    ActionInput,
    ActionOutput,
    AuthError,
    Connector,
    Landed,
    PermanentError,
    Reconciliation,
    RiskLevel,
    TargetNotFound,
    TransientError,
    action,
)

with warnings.catch_warnings():
    # ldap3 2.9.1 imports pyasn1 names that pyasn1 0.6.2 deprecated (tagMap, typeMap): a
    # warning about ldap3's own code, on import, that nothing here can act on.
    warnings.filterwarnings(
        "ignore", r"\w+ is deprecated\. Please use \w+ instead", DeprecationWarning
    )
    import ldap3
    from ldap3.core.exceptions import (
        LDAPCommunicationError,
        LDAPException,
        LDAPInvalidDnError,
        LDAPInvalidFilterError,
        LDAPOperationResult,
        LDAPResponseTimeoutError,
        LDAPSocketOpenError,
        LDAPStartTLSError,
    )
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import parse_dn, safe_dn

T = TypeVar("T")

ACCOUNTDISABLE = 0x2  # userAccountControl: the account is disabled
LOCKED_BY_ADMIN = "000001010000Z"  # ppolicy: locked until an administrator unlocks it
_ATTRIBUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)$")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MESSAGE_LIMIT = 300

# LDAP result codes (RFC 4511) that tell what the engine should do.
_NO_SUCH_ATTRIBUTE = 16
_UNDEFINED_ATTRIBUTE_TYPE = 17
_ATTRIBUTE_OR_VALUE_EXISTS = 20
_NO_SUCH_OBJECT = 32
_INVALID_CREDENTIALS = 49
_INSUFFICIENT_ACCESS = 50
_OBJECT_CLASS_VIOLATION = 65
_ENTRY_ALREADY_EXISTS = 68  # what Active Directory answers for a member added twice
_TRANSIENT_RESULTS = {3, 51, 52}  # timeLimitExceeded, busy, unavailable
_TLS_REQUIRED_RESULTS = {8, 13}  # strongerAuthRequired, confidentialityRequired


def _check_dn(value: str) -> str:
    try:
        parse_dn(value)
    except LDAPInvalidDnError:
        raise ValueError(f"{value!r} is not a valid LDAP DN") from None
    return value


def _check_attribute(value: str) -> str:
    if not _ATTRIBUTE.match(value):
        raise ValueError(f"{value!r} is not an LDAP attribute name")
    return value


Dn = Annotated[str, Field(min_length=1), AfterValidator(_check_dn)]
AttributeName = Annotated[str, AfterValidator(_check_attribute)]


class LdapConfig(BaseModel):
    """Where the directory is, how to bind, and how accounts are found and changed."""

    # A url may carry credentials by mistake: errors never echo the values given.
    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        json_schema_extra={
            "examples": [
                {
                    "url": "ldap://127.0.0.1:9",
                    "bind_dn": "cn=quell,ou=services,dc=corp,dc=example",
                    "base_dn": "dc=corp,dc=example",
                }
            ]
        },
    )

    url: str = Field(description="ldap://host[:port] or ldaps://host[:port].")
    bind_dn: str = Field(
        min_length=1,
        description="The service account to bind as (a DN; Active Directory also takes "
        "user@domain). Its password is the bind_password secret.",
    )
    base_dn: Dn = Field(description="The directory's base; searches start here by default.")
    user_search_base: Dn | None = Field(None, description="Where accounts are (default base_dn).")
    group_search_base: Dn | None = Field(None, description="Where groups are (default base_dn).")
    user_filter: str | None = Field(
        None,
        description="The filter finding an account; {username} stands for the escaped name. "
        "Default (uid={username}) in openldap mode, (sAMAccountName={username}) in ad mode.",
    )
    start_tls: bool = Field(False, description="Upgrade an ldap:// connection with StartTLS.")
    ca_file: Path | None = Field(
        None, description="PEM file of the CAs to trust (default: the system's CAs)."
    )
    timeout: float = Field(10.0, gt=0, le=300, description="Seconds to connect and per reply.")
    mode: Literal["openldap", "ad"] = "openldap"
    disable_attribute: AttributeName = Field(
        "pwdAccountLockedTime",
        description="openldap mode: the attribute set to disable an account, deleted to enable it.",
    )
    disable_value: str = Field(
        LOCKED_BY_ADMIN, min_length=1, description="openldap mode: the value that disables."
    )
    quarantine_group_dn: Dn | None = Field(
        None, description="The group the quarantine actions put accounts in."
    )
    group_member_attribute: Literal["member", "memberUid"] = Field(
        "member",
        description="How the quarantine group lists an account: its DN in member, or its "
        "login name in memberUid (posixGroup).",
    )
    member_uid_attribute: AttributeName | None = Field(
        None,
        description="The account's attribute whose value goes in memberUid (default uid, "
        "sAMAccountName in ad mode).",
    )
    password_delivery: Literal["none", "file"] = Field(
        "none",
        description="Where reset_password puts the new password: nowhere (the account is "
        "locked out until someone sets another) or a new 0600 file in password_delivery_dir.",
    )
    password_delivery_dir: Path | None = None
    password_length: int = Field(24, ge=16, le=256)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ldap", "ldaps"):
            raise ValueError("the url must start with ldap:// or ldaps://")
        if parts.username is not None or parts.password is not None:
            raise ValueError("the url must not carry credentials: use bind_dn and the secret")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"the port of {value!r} is not a number from 1 to 65535") from None
        if not parts.hostname or port == 0:
            raise ValueError(f"{value!r} names no host (or port 0)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{value!r}: give only the scheme, host and port")
        return value

    @field_validator("user_filter")
    @classmethod
    def _user_filter(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "{username}" not in value:
            raise ValueError("the user_filter must contain {username}")
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError("the user_filter must be a parenthesized LDAP filter")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LdapConfig:
        if self.start_tls and self.scheme == "ldaps":
            raise ValueError("start_tls is for ldap:// urls; ldaps:// is TLS already")
        if self.password_delivery == "file":
            if self.password_delivery_dir is None:
                raise ValueError("password_delivery file needs a password_delivery_dir")
            if not self.password_delivery_dir.is_absolute():
                raise ValueError("the password_delivery_dir must be an absolute path")
        return self

    @property
    def scheme(self) -> str:
        """``ldap`` or ``ldaps``."""
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        """The server's host name or address."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The server's port (389 or 636 when the url gives none)."""
        return urlsplit(self.url).port or (636 if self.scheme == "ldaps" else 389)

    @property
    def encrypted(self) -> bool:
        """Whether the connection is TLS (LDAPS or StartTLS)."""
        return self.scheme == "ldaps" or self.start_tls

    @property
    def filter_template(self) -> str:
        """The user filter in force."""
        if self.user_filter is not None:
            return self.user_filter
        return "(uid={username})" if self.mode == "openldap" else "(sAMAccountName={username})"

    @property
    def uid_attribute(self) -> str:
        """The account attribute whose value is its memberUid."""
        if self.member_uid_attribute is not None:
            return self.member_uid_attribute
        return "uid" if self.mode == "openldap" else "sAMAccountName"


# -- inputs and outputs ----------------------------------------------------------------------


class AccountIn(ActionInput):
    """One account, by its login name."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"username": "jdoe"}]}
    )

    username: str = Field(
        min_length=1,
        max_length=256,
        description="The login name (uid, sAMAccountName, ...) that user_filter matches.",
    )


class AccountOut(ActionOutput):
    """The account's state after the action (in a dry run: now, and what would change)."""

    username: str
    dn: str
    disabled: bool
    changed: bool = Field(description="Whether this call changed the directory.")
    user_account_control: int | None = Field(None, description="ad mode: the value now.")
    dry_run: bool = False
    would_change: bool | None = Field(None, description="Dry run only.")


class PasswordOut(ActionOutput):
    """Where the new password went; never the password itself."""

    username: str
    dn: str
    changed: bool
    delivery: Literal["none", "file"]
    delivered_to: str | None = Field(None, description="The file holding the new password.")
    dry_run: bool = False
    would_deliver_to: str | None = Field(None, description="Dry run only: the folder.")


class MembershipOut(ActionOutput):
    """Whether the account is in the quarantine group after the action."""

    username: str
    dn: str
    group_dn: str
    member: bool
    changed: bool
    dry_run: bool = False
    would_change: bool | None = Field(None, description="Dry run only.")


class GroupInfo(BaseModel):
    """A group that lists the account."""

    dn: str
    name: str | None = Field(None, description="Its cn.")


class GroupsOut(ActionOutput):
    """The groups that list the account, by DN."""

    username: str
    dn: str
    groups: list[GroupInfo]
    in_quarantine_group: bool | None = Field(
        None, description="Whether quarantine_group_dn is among them (None: not configured)."
    )


# -- the directory, synchronously (runs in a worker thread) ---------------------------------


class _VerifiedTls(ldap3.Tls):
    """TLS that checks the certificate chain and the host name with Python's own ssl checks
    (ldap3's host name check calls ``ssl.match_hostname``, deprecated and gone in 3.12)."""

    def __init__(self, ca_file: Path | None) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self.ca_path = ca_file
        self.failure: OSError | None = None  # why the handshake failed (ssl.SSLError is one)

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        """Wrap the connection's socket, verifying the server against ``ca_path``."""
        context = ssl.create_default_context(
            cafile=str(self.ca_path) if self.ca_path is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            connection.socket = context.wrap_socket(
                connection.socket,
                server_hostname=connection.server.host,
                do_handshake_on_connect=do_handshake,
            )
        except (ssl.SSLError, OSError) as exc:
            self.failure = exc
            raise


@dataclass(frozen=True)
class _Entry:
    """A found entry: its DN and the raw values of the attributes asked for (by lower name)."""

    dn: str
    values: dict[str, list[bytes]]

    def texts(self, attribute: str) -> list[str]:
        return [v.decode("utf-8", "replace") for v in self.values.get(attribute.lower(), [])]

    def first(self, attribute: str) -> str | None:
        found = self.texts(attribute)
        return found[0] if found else None


class _Directory:
    """One bound connection and the operations the actions need."""

    def __init__(self, connection: ldap3.Connection, settings: LdapConfig) -> None:
        self.connection = connection
        self.settings = settings

    def find(self, username: str, attributes: Sequence[str]) -> _Entry:
        """The one account ``user_filter`` matches for ``username``."""
        base = self.settings.user_search_base or self.settings.base_dn
        search_filter = self.settings.filter_template.replace(
            "{username}", escape_filter_chars(username)
        )
        try:
            self.connection.search(
                base,
                search_filter,
                "SUBTREE",
                attributes=list(attributes) or ldap3.NO_ATTRIBUTES,
                size_limit=2,
            )
        except LDAPInvalidFilterError:
            raise PermanentError(
                f"user_filter {self.settings.filter_template!r} is not a valid LDAP filter",
                code="bad_config",
            ) from None
        except LDAPOperationResult as exc:
            if exc.result == _NO_SUCH_OBJECT:
                raise PermanentError(
                    f"the user search base {base!r} does not exist", code="bad_config"
                ) from None
            raise
        entries = _entries(self.connection.response)
        if not entries:
            raise TargetNotFound(
                f"no account {username!r} in {base} (filter {search_filter})",
                details={"username": username},
            )
        if len(entries) > 1:
            raise PermanentError(
                f"more than one entry in {base} matches {search_filter}: "
                "make user_filter select one account per name",
                code="ambiguous_account",
                details={"username": username},
            )
        return entries[0]

    def modify(self, dn: str, changes: dict[str, list[tuple[str, list[str | bytes]]]]) -> None:
        self.connection.modify(dn, changes)  # type: ignore[no-untyped-call]

    def has_value(self, dn: str, attribute: str, value: str) -> bool:
        """Whether ``dn``'s ``attribute`` holds ``value`` (an LDAP compare)."""
        try:
            found = self.connection.compare(dn, attribute, value)  # type: ignore[no-untyped-call]
            return bool(found)
        except LDAPOperationResult as exc:
            if exc.result == _NO_SUCH_ATTRIBUTE:  # the entry has no such attribute at all
                return False
            if exc.result == _NO_SUCH_OBJECT:
                raise TargetNotFound(
                    f"the group {dn!r} does not exist", details={"group_dn": dn}
                ) from None
            raise

    def search(self, base: str, search_filter: str, attributes: Sequence[str]) -> list[_Entry]:
        """Every entry under ``base`` that ``search_filter`` matches, page by page."""
        try:
            found = self.connection.extend.standard.paged_search(
                base,
                search_filter,
                "SUBTREE",
                attributes=list(attributes),
                paged_size=500,
                generator=False,
            )
        except LDAPOperationResult as exc:
            if exc.result == _NO_SUCH_OBJECT:
                raise PermanentError(
                    f"the search base {base!r} does not exist", code="bad_config"
                ) from None
            raise
        return _entries(found)


def _entries(response: Any) -> list[_Entry]:
    """The entries of a search response (continuation references are skipped)."""
    return [
        _Entry(
            dn=str(item["dn"]),
            values={
                str(name).lower(): [v if isinstance(v, bytes) else str(v).encode() for v in vals]
                for name, vals in (item.get("raw_attributes") or {}).items()
            },
        )
        for item in response or []
        if isinstance(item, dict) and item.get("type") == "searchResEntry"
    ]


def _same_dn(first: str, second: str) -> bool:
    try:
        return bool(safe_dn(first).lower() == safe_dn(second).lower())
    except LDAPInvalidDnError:
        return first.lower() == second.lower()


def _safe_file_part(username: str) -> str:
    """The username as a harmless file-name part: no separators, no leading dot."""
    cleaned = _UNSAFE_FILE_CHARS.sub("_", username)[:64]
    return "_" + cleaned[1:] if cleaned.startswith(".") else cleaned


def _new_password(length: int) -> str:
    """A random password of ``length`` URL-safe characters with a lower, an upper and a digit
    (so that Active Directory's complexity rule accepts it)."""
    while True:
        candidate = secrets.token_urlsafe(length)[:length]
        if (
            any(c.islower() for c in candidate)
            and any(c.isupper() for c in candidate)
            and any(c.isdigit() for c in candidate)
        ):
            return candidate


def _trim(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


# -- the connector ---------------------------------------------------------------------------


class Ldap(Connector):
    """Accounts in an OpenLDAP or Active Directory-style directory: disable, enable, reset a
    password, quarantine by group, list groups."""

    name = "ldap"
    title = "LDAP directory (OpenLDAP, Active Directory)"
    Config = LdapConfig
    secrets = ("bind_password",)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        if not isinstance(config, LdapConfig):
            raise TypeError("the ldap connector needs its Config (url, bind_dn, base_dn)")
        self.settings = config

    # -- actions -------------------------------------------------------------------------

    @action(
        "disable_account",
        risk=RiskLevel.HIGH,
        title="Disable an account",
        supports_dry_run=True,
        idempotent=True,
        reverts="enable_account",
        reconcile="account_disabled",
        openc2=("set", "er:account", "er"),
    )
    async def disable_account(self, ctx: ActionContext, params: AccountIn) -> AccountOut:
        """Disable the account: ppolicy lock (or the configured attribute) in openldap mode,
        the ACCOUNTDISABLE bit of userAccountControl in ad mode."""
        return await self._set_disabled(ctx, params.username, disabled=True)

    @action(
        "enable_account",
        risk=RiskLevel.MEDIUM,
        title="Enable an account",
        supports_dry_run=True,
        idempotent=True,
        reverts="disable_account",
        reconcile="account_enabled",
        openc2=("set", "er:account", "er"),
    )
    async def enable_account(self, ctx: ActionContext, params: AccountIn) -> AccountOut:
        """Enable the account again: delete the lock attribute (openldap mode) or clear the
        ACCOUNTDISABLE bit (ad mode)."""
        return await self._set_disabled(ctx, params.username, disabled=False)

    @action(
        "reset_password",
        risk=RiskLevel.HIGH,
        title="Reset an account's password",
        supports_dry_run=True,
    )
    async def reset_password(self, ctx: ActionContext, params: AccountIn) -> PasswordOut:
        """Set a new random password; it goes only to the configured delivery (a 0600 file, or
        nowhere), never to the output or the logs."""
        settings = self.settings
        if settings.mode == "ad" and not settings.encrypted:
            raise PermanentError(
                "Active Directory accepts a new password only over TLS: use an ldaps:// url "
                "or start_tls",
                code="tls_required",
            )
        folder = self._delivery_dir() if settings.password_delivery == "file" else None
        password_attribute = "unicodePwd" if settings.mode == "ad" else "userPassword"

        def work(directory: _Directory) -> PasswordOut:
            account = directory.find(params.username, [])
            base = {
                "username": params.username,
                "dn": account.dn,
                "delivery": settings.password_delivery,
            }
            if ctx.dry_run:
                return PasswordOut(
                    **base,
                    changed=False,
                    dry_run=True,
                    would_deliver_to=str(folder) if folder is not None else None,
                )
            password = _new_password(settings.password_length)
            path = self._deliver(folder, params.username, password) if folder else None
            try:
                if settings.mode == "ad":
                    directory.connection.extend.microsoft.modify_password(account.dn, password)
                else:
                    directory.connection.extend.standard.modify_password(
                        account.dn, new_password=password
                    )
            except LDAPOperationResult:
                if path is not None:  # refused: the password never took effect
                    path.unlink(missing_ok=True)
                raise
            except BaseException:
                # The connection failed mid-way: the password may have been set, so its file
                # stays (a retry sets and delivers another).
                if path is not None:
                    ctx.log.warning("ldap_password_reset_unknown", delivered_to=str(path))
                raise
            return PasswordOut(
                **base, changed=True, delivered_to=str(path) if path is not None else None
            )

        result = await self._run(ctx, f"set the {password_attribute} of {params.username}", work)
        if not result.dry_run:
            if not settings.encrypted:
                ctx.log.warning("ldap_password_sent_unencrypted", url=settings.url)
            ctx.log.info(
                "ldap_password_reset",
                username=result.username,
                dn=result.dn,
                delivery=result.delivery,
                delivered_to=result.delivered_to,
            )
        return result

    @action(
        "add_to_quarantine_group",
        risk=RiskLevel.MEDIUM,
        title="Put an account in the quarantine group",
        supports_dry_run=True,
        idempotent=True,
        reverts="remove_from_quarantine_group",
        reconcile="in_quarantine_group",
    )
    async def add_to_quarantine_group(self, ctx: ActionContext, params: AccountIn) -> MembershipOut:
        """Add the account to quarantine_group_dn (by DN in member, or by name in memberUid)."""
        return await self._set_member(ctx, params.username, member=True)

    @action(
        "remove_from_quarantine_group",
        risk=RiskLevel.LOW,
        title="Take an account out of the quarantine group",
        supports_dry_run=True,
        idempotent=True,
        reverts="add_to_quarantine_group",
        reconcile="out_of_quarantine_group",
    )
    async def remove_from_quarantine_group(
        self, ctx: ActionContext, params: AccountIn
    ) -> MembershipOut:
        """Remove the account from quarantine_group_dn."""
        return await self._set_member(ctx, params.username, member=False)

    @action("get_groups", risk=RiskLevel.READ, idempotent=True, title="List an account's groups")
    async def get_groups(self, ctx: ActionContext, params: AccountIn) -> GroupsOut:
        """The groups whose member, uniqueMember or memberUid lists the account."""
        settings = self.settings
        uid_attribute = settings.uid_attribute

        def work(directory: _Directory) -> GroupsOut:
            account = directory.find(params.username, [uid_attribute])
            terms = [f"(member={escape_filter_chars(account.dn)})"]
            if settings.mode == "openldap":
                terms.append(f"(uniqueMember={escape_filter_chars(account.dn)})")
            uid = account.first(uid_attribute)
            if uid is not None and (
                settings.mode == "openldap" or settings.group_member_attribute == "memberUid"
            ):
                terms.append(f"(memberUid={escape_filter_chars(uid)})")
            search_filter = terms[0] if len(terms) == 1 else f"(|{''.join(terms)})"
            found = directory.search(
                settings.group_search_base or settings.base_dn, search_filter, ["cn"]
            )
            groups = sorted(
                (GroupInfo(dn=entry.dn, name=entry.first("cn")) for entry in found),
                key=lambda group: group.dn.lower(),
            )
            quarantine = settings.quarantine_group_dn
            return GroupsOut(
                username=params.username,
                dn=account.dn,
                groups=groups,
                in_quarantine_group=(
                    None
                    if quarantine is None
                    else any(_same_dn(group.dn, quarantine) for group in groups)
                ),
            )

        return await self._run(ctx, f"list the groups of {params.username}", work)

    async def health(self, ctx: ActionContext) -> str:
        """Bind as bind_dn and read base_dn."""
        settings = self.settings

        def work(directory: _Directory) -> str:
            try:
                directory.connection.search(
                    settings.base_dn, "(objectClass=*)", "BASE", attributes=ldap3.NO_ATTRIBUTES
                )
            except LDAPOperationResult as exc:
                if exc.result == _NO_SUCH_OBJECT:
                    raise PermanentError(
                        f"the base_dn {settings.base_dn!r} does not exist", code="bad_config"
                    ) from None
                raise
            if not _entries(directory.connection.response):
                raise PermanentError(
                    f"{settings.bind_dn!r} cannot read the base_dn {settings.base_dn!r}",
                    code="insufficient_access",
                )
            security = (
                "LDAPS"
                if settings.scheme == "ldaps"
                else ("StartTLS" if settings.start_tls else "no TLS")
            )
            return (
                f"{settings.host}:{settings.port} ({security}, {settings.mode} mode): "
                f"bound as {settings.bind_dn}, read {settings.base_dn}"
            )

        return await self._run(ctx, "read the base_dn", work)

    # -- reconcile hooks -----------------------------------------------------------------

    async def account_disabled(self, ctx: ActionContext, params: AccountIn) -> Reconciliation:
        """Whether the account is disabled (a disable_account landed)."""
        return await self._reconcile_disabled(ctx, params.username, disabled=True)

    async def account_enabled(self, ctx: ActionContext, params: AccountIn) -> Reconciliation:
        """Whether the account is enabled (an enable_account landed)."""
        return await self._reconcile_disabled(ctx, params.username, disabled=False)

    async def in_quarantine_group(self, ctx: ActionContext, params: AccountIn) -> Reconciliation:
        """Whether the account is in the quarantine group (an add landed)."""
        return await self._reconcile_member(ctx, params.username, member=True)

    async def out_of_quarantine_group(
        self, ctx: ActionContext, params: AccountIn
    ) -> Reconciliation:
        """Whether the account is out of the quarantine group (a remove landed)."""
        return await self._reconcile_member(ctx, params.username, member=False)

    # -- account state -------------------------------------------------------------------

    def _state_attributes(self) -> list[str]:
        if self.settings.mode == "ad":
            return ["userAccountControl"]
        return [self.settings.disable_attribute]

    def _read_state(self, account: _Entry, username: str) -> tuple[bool, int | None]:
        """Whether the account is disabled, and its userAccountControl (ad mode)."""
        if self.settings.mode == "openldap":
            return self.settings.disable_value in account.texts(
                self.settings.disable_attribute
            ), None
        raw = account.first("userAccountControl")
        if raw is None:
            raise PermanentError(
                f"the account {username!r} ({account.dn}) has no userAccountControl: is it an "
                "Active Directory user, and may the bind DN read it?",
                code="not_an_ad_account",
            )
        try:
            control = int(raw)
        except ValueError:
            raise PermanentError(
                f"the userAccountControl of {account.dn} is not a number: {raw!r}"
            ) from None
        return bool(control & ACCOUNTDISABLE), control

    async def _set_disabled(self, ctx: ActionContext, username: str, disabled: bool) -> AccountOut:
        settings = self.settings

        def work(directory: _Directory) -> AccountOut:
            account = directory.find(username, self._state_attributes())
            now, control = self._read_state(account, username)
            out = {"username": username, "dn": account.dn}
            if settings.mode == "openldap":
                # enable deletes the attribute whatever it holds (ppolicy's own lockout too)
                present = bool(account.texts(settings.disable_attribute))
                needed = not now if disabled else present
            else:
                needed = now != disabled
            if ctx.dry_run:
                return AccountOut(
                    **out,
                    disabled=now,
                    changed=False,
                    user_account_control=control,
                    dry_run=True,
                    would_change=needed,
                )
            if not needed:
                return AccountOut(
                    **out, disabled=disabled, changed=False, user_account_control=control
                )
            if control is not None:  # ad mode
                control = control | ACCOUNTDISABLE if disabled else control & ~ACCOUNTDISABLE
                directory.modify(
                    account.dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(control)])]}
                )
            elif disabled:
                directory.modify(
                    account.dn,
                    {
                        settings.disable_attribute: [
                            (ldap3.MODIFY_REPLACE, [settings.disable_value])
                        ]
                    },
                )
            else:
                try:
                    directory.modify(
                        account.dn, {settings.disable_attribute: [(ldap3.MODIFY_DELETE, [])]}
                    )
                except LDAPOperationResult as exc:
                    if exc.result != _NO_SUCH_ATTRIBUTE:  # deleted meanwhile: enabled anyway
                        raise
            return AccountOut(**out, disabled=disabled, changed=True, user_account_control=control)

        verb = "disable" if disabled else "enable"
        result = await self._run(ctx, f"{verb} {username}", work)
        if not result.dry_run:
            ctx.log.info(
                f"ldap_account_{verb}d", username=username, dn=result.dn, changed=result.changed
            )
        return result

    async def _reconcile_disabled(
        self, ctx: ActionContext, username: str, disabled: bool
    ) -> Reconciliation:
        def work(directory: _Directory) -> Reconciliation:
            account = directory.find(username, self._state_attributes())
            now, control = self._read_state(account, username)
            if now != disabled:
                state = "enabled" if disabled else "disabled"
                return Reconciliation(Landed.NOT_LANDED, detail=f"{account.dn} is {state}")
            output = AccountOut(
                username=username,
                dn=account.dn,
                disabled=now,
                changed=True,
                user_account_control=control,
            )
            return Reconciliation(
                Landed.LANDED,
                output.model_dump(mode="json"),
                detail=f"{account.dn} is {'disabled' if now else 'enabled'}",
            )

        return await self._run(ctx, f"read the state of {username}", work)

    # -- quarantine group ----------------------------------------------------------------

    def _group(self) -> str:
        if self.settings.quarantine_group_dn is None:
            raise PermanentError(
                "no quarantine_group_dn is configured for this ldap connector", code="bad_config"
            )
        return self.settings.quarantine_group_dn

    def _member_value(self, account: _Entry, username: str) -> str:
        """What the quarantine group lists the account by: its DN, or its memberUid."""
        if self.settings.group_member_attribute == "member":
            return account.dn
        uid = account.first(self.settings.uid_attribute)
        if uid is None:
            raise PermanentError(
                f"the account {username!r} ({account.dn}) has no {self.settings.uid_attribute} "
                "to list in memberUid",
            )
        return uid

    async def _set_member(self, ctx: ActionContext, username: str, member: bool) -> MembershipOut:
        group = self._group()
        attribute = self.settings.group_member_attribute

        def work(directory: _Directory) -> MembershipOut:
            account = directory.find(username, [self.settings.uid_attribute])
            value = self._member_value(account, username)
            now = directory.has_value(group, attribute, value)
            out = {"username": username, "dn": account.dn, "group_dn": group}
            if ctx.dry_run:
                return MembershipOut(
                    **out, member=now, changed=False, dry_run=True, would_change=now != member
                )
            if now == member:
                return MembershipOut(**out, member=member, changed=False)
            try:
                operation = ldap3.MODIFY_ADD if member else ldap3.MODIFY_DELETE
                directory.modify(group, {attribute: [(operation, [value])]})
            except LDAPOperationResult as exc:
                if member and exc.result in (_ATTRIBUTE_OR_VALUE_EXISTS, _ENTRY_ALREADY_EXISTS):
                    return MembershipOut(**out, member=True, changed=False)  # added meanwhile
                if not member and exc.result == _NO_SUCH_ATTRIBUTE:
                    return MembershipOut(**out, member=False, changed=False)  # removed meanwhile
                if not member and exc.result == _OBJECT_CLASS_VIOLATION:
                    raise PermanentError(
                        f"cannot remove {account.dn} from {group}: the group's object class "
                        f"needs at least one {attribute} (give the group a placeholder member)",
                        code="last_member",
                    ) from None
                raise
            return MembershipOut(**out, member=member, changed=True)

        verb = "add to" if member else "remove from"
        result = await self._run(ctx, f"{verb} {group} the account {username}", work)
        if not result.dry_run:
            ctx.log.info(
                "ldap_quarantine_added" if member else "ldap_quarantine_removed",
                username=username,
                dn=result.dn,
                group_dn=group,
                changed=result.changed,
            )
        return result

    async def _reconcile_member(
        self, ctx: ActionContext, username: str, member: bool
    ) -> Reconciliation:
        group = self._group()

        def work(directory: _Directory) -> Reconciliation:
            account = directory.find(username, [self.settings.uid_attribute])
            value = self._member_value(account, username)
            now = directory.has_value(group, self.settings.group_member_attribute, value)
            detail = f"{account.dn} is {'in' if now else 'not in'} {group}"
            if now != member:
                return Reconciliation(Landed.NOT_LANDED, detail=detail)
            output = MembershipOut(
                username=username, dn=account.dn, group_dn=group, member=now, changed=True
            )
            return Reconciliation(Landed.LANDED, output.model_dump(mode="json"), detail=detail)

        return await self._run(ctx, f"read the groups of {username}", work)

    # -- password delivery ---------------------------------------------------------------

    def _delivery_dir(self) -> Path:
        folder = self.settings.password_delivery_dir
        if folder is None:  # the config validator requires it with password_delivery file
            raise PermanentError("no password_delivery_dir is configured", code="bad_config")
        if not folder.is_dir():
            raise PermanentError(
                f"the password_delivery_dir {str(folder)!r} is not a directory",
                code="delivery_failed",
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermanentError(
                f"the password_delivery_dir {str(folder)!r} is not writable by Quell",
                code="delivery_failed",
            )
        return folder

    @staticmethod
    def _deliver(folder: Path, username: str, password: str) -> Path:
        """Write ``password`` to a new 0600 file in ``folder``; return its path."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{_safe_file_part(username)}-{stamp}-{secrets.token_hex(3)}.password"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            descriptor = os.open(path, flags, 0o600)
        except OSError as exc:
            raise PermanentError(
                f"cannot create a password file in {str(folder)!r}: {exc.strerror or exc}",
                code="delivery_failed",
            ) from None
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(password + "\n")
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise PermanentError(
                f"cannot write the password file {str(path)!r}: {exc.strerror or exc}",
                code="delivery_failed",
            ) from None
        return path

    # -- connection ----------------------------------------------------------------------

    async def _run(self, ctx: ActionContext, doing: str, work: Callable[[_Directory], T]) -> T:
        """Run ``work`` on a bound connection in a worker thread; LDAP failures as
        :class:`ActionError`."""
        try:
            secret = ctx.secret("bind_password")
        except KeyError:
            raise PermanentError(
                "the ldap connector's bind_password secret is not configured", code="no_secret"
            ) from None
        password = secret.reveal()
        if not password:
            raise AuthError(
                "the bind_password secret is empty (an empty password would be an "
                "unauthenticated bind)"
            )
        return await asyncio.to_thread(self._session, password, doing, work)

    def _session(self, password: str, doing: str, work: Callable[[_Directory], T]) -> T:
        settings = self.settings
        tls = _VerifiedTls(settings.ca_file) if settings.encrypted else None
        if settings.ca_file is not None and settings.encrypted and not settings.ca_file.is_file():
            raise PermanentError(f"the ca_file {str(settings.ca_file)!r} does not exist")
        server = ldap3.Server(
            settings.host,
            port=settings.port,
            use_ssl=settings.scheme == "ldaps",
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=settings.timeout,
        )
        connection = ldap3.Connection(
            server,
            user=settings.bind_dn,
            password=password,
            authentication=ldap3.SIMPLE,
            auto_bind=ldap3.AUTO_BIND_NONE,
            client_strategy=ldap3.SYNC,
            auto_referrals=False,
            raise_exceptions=True,
            receive_timeout=math.ceil(settings.timeout),  # whole seconds (SO_RCVTIMEO)
            return_empty_attributes=False,
        )
        try:
            try:
                connection.open()
                if settings.start_tls:
                    connection.start_tls()
                connection.bind()
            except LDAPOperationResult as exc:
                if exc.result == _INVALID_CREDENTIALS:
                    detail = _trim(str(exc.message or ""))
                    raise AuthError(
                        f"the directory at {settings.url} refused the bind as "
                        f"{settings.bind_dn!r}: invalid credentials"
                        + (f" ({detail})" if detail else "")
                        + "; check bind_dn and the bind_password secret"
                    ) from None
                raise
            return work(_Directory(connection, settings))
        except ActionError:
            raise
        except LDAPException as exc:
            raise self._translate(exc, doing, tls) from None
        finally:
            with contextlib.suppress(LDAPException, OSError):
                connection.unbind()
            # ldap3 leaves the socket of a failed connect (or TLS handshake) open
            with contextlib.suppress(OSError):
                if connection.socket is not None:
                    connection.socket.close()

    def _translate(self, exc: LDAPException, doing: str, tls: _VerifiedTls | None) -> ActionError:
        """An ldap3 exception as the :class:`ActionError` the engine acts on."""
        settings = self.settings
        if isinstance(exc, LDAPOperationResult):
            code = int(exc.result) if exc.result is not None else -1
            description = str(exc.description or "error")
            message = _trim(str(exc.message or ""))
            text = f"{doing}: the directory answered {description} ({code})"
            text += f": {message}" if message else ""
            details = {"ldap_result": code, "ldap_description": description}
            if code == _INSUFFICIENT_ACCESS:
                return PermanentError(
                    f"{doing}: {settings.bind_dn!r} lacks the access rights",
                    code="insufficient_access",
                    details=details,
                )
            if code == _NO_SUCH_OBJECT:
                return TargetNotFound(text, details=details)
            if code == _UNDEFINED_ATTRIBUTE_TYPE and settings.mode == "openldap":
                return PermanentError(
                    f"{text} (is the ppolicy overlay loaded? else set disable_attribute)",
                    details=details,
                )
            if code in _TLS_REQUIRED_RESULTS:
                return PermanentError(
                    f"{text} (use an ldaps:// url or start_tls)",
                    code="tls_required",
                    details=details,
                )
            if code in _TRANSIENT_RESULTS:
                return TransientError(text, details=details)
            return PermanentError(text, details=details)
        if tls is not None and tls.failure is not None:
            failure = tls.failure
            where = f"TLS with {settings.host}:{settings.port} failed"
            if isinstance(failure, ssl.SSLCertVerificationError):
                reason = failure.verify_message or failure.reason or str(failure)
                return PermanentError(
                    f"{where}: the server's certificate was not accepted ({reason}); "
                    "give the CA that signed it as ca_file",
                    code="tls_failed",
                )
            reason = getattr(failure, "reason", None) or failure.strerror or str(failure)
            return PermanentError(f"{where}: {reason}", code="tls_failed")
        if isinstance(exc, LDAPStartTLSError):
            return PermanentError(
                f"StartTLS with {settings.url} failed: {_trim(str(exc))}", code="tls_failed"
            )
        if isinstance(exc, LDAPSocketOpenError):
            return TransientError(
                f"cannot reach the directory at {settings.url}: {_trim(str(exc))}",
                code="unreachable",
            )
        if isinstance(exc, LDAPResponseTimeoutError):
            return TransientError(
                f"{doing}: no answer from {settings.url} within {settings.timeout:g}s",
                code="timeout",
            )
        if isinstance(exc, LDAPCommunicationError):
            return TransientError(
                f"{doing}: the connection to {settings.url} failed: {_trim(str(exc))}",
                code="connection_lost",
            )
        return PermanentError(f"{doing}: {type(exc).__name__}: {_trim(str(exc))}")


__all__ = [
    "ACCOUNTDISABLE",
    "AccountIn",
    "AccountOut",
    "GroupInfo",
    "GroupsOut",
    "Ldap",
    "LdapConfig",
    "MembershipOut",
    "PasswordOut",
]
