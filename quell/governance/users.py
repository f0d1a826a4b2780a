"""Local users: argon2id passwords, login sessions that expire, failed logins rate-limited.

A user has a role (what they, their sessions and their API tokens may do; a change takes effect
on the next request) and, optionally, a password. Passwords are hashed with argon2id
(``argon2-cffi``) and never stored, logged or audited. ``login`` answers every failure the same
way ("invalid name or password") and takes as long for an unknown name as for a wrong password
(it verifies against a dummy hash). Failed logins are rows in ``login_failures``, counted over
a window per name and per client address, so the limit holds across server processes; past it,
logins are refused with :class:`~quell.errors.RateLimited` (HTTP 429 with ``Retry-After``)
before any password is checked. Every login, failed or not, is audited.

A session token reads like an API token with its own prefix (``qs_``); only its SHA-256 is
stored. A session lasts ``session_hours`` from its last use: each use moves ``last_seen_at`` and
``expires_at`` forward, written at most once a minute. Logging out, disabling the user or
setting a new password revokes sessions; a user who changes their own password
(:meth:`UserService.change_password`, with the current one) keeps only the session that did it.
A sign-in at an OIDC provider (quell.governance.oidc) opens its session through
:meth:`UserService.open_session` too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.errors import AuthenticationRequired, Conflict, InvalidInput, NotFound, RateLimited
from quell.governance.permissions import (
    Permission,
    builtin_permissions,
    parse_role,
)
from quell.governance.tokens import Principal, generate_token, hash_token, is_well_formed
from quell.ids import new_id
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.schema import api_tokens, login_failures, user_sessions, users

if TYPE_CHECKING:
    from quell.governance.audit import AuditLog
    from quell.governance.roles import RoleBook

SESSION_PREFIX = "qs_"
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 takes any length; this bounds the work per attempt
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_FAILED = "invalid name or password"


@dataclass(frozen=True)
class User:
    """A user's record; never the password hash."""

    id: str
    name: str
    display_name: str | None
    role: str
    has_password: bool
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None
    email: str | None = None  # where approval links are mailed

    @property
    def status(self) -> str:
        """``active`` or ``disabled``."""
        return "disabled" if self.disabled_at is not None else "active"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.id,
            "name": self.name,
            "display_name": self.display_name,
            "role": self.role,
            "status": self.status,
            "has_password": self.has_password,
            "disabled_at": self.disabled_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_login_at": self.last_login_at,
            "email": self.email,
        }


@dataclass(frozen=True)
class Session:
    """A login session's record; never its token."""

    id: str
    user: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime
    revoked_at: datetime | None
    client: str | None


@dataclass(frozen=True)
class LoginLimits:
    """How many failed logins are allowed within ``window``, per name and per client."""

    per_name: int = 5
    per_client: int = 20
    window: timedelta = timedelta(minutes=15)


_USER_COLUMNS = (
    users.c.id,
    users.c.name,
    users.c.display_name,
    users.c.role,
    users.c.password_hash.is_not(None).label("has_password"),
    users.c.disabled_at,
    users.c.created_at,
    users.c.updated_at,
    users.c.last_login_at,
    users.c.email,
)


def _user(row: Any) -> User:
    fields = row._asdict()
    fields["has_password"] = bool(fields["has_password"])
    return User(**fields)


def check_name(name: str) -> str:
    """``name`` if it is a valid user name, else InvalidInput."""
    if not _NAME_RE.match(name):
        raise InvalidInput(
            "user name must be 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit",
            field="name",
            value=name,
        )
    return name


def check_password(password: SecretValue) -> None:
    """InvalidInput unless ``password`` is long enough (the value is never in the error)."""
    length = len(password.reveal())
    if length < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters (it has {length})",
            field="password",
        )
    if length > MAX_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be at most {MAX_PASSWORD_LENGTH} characters", field="password"
        )


class UserService:
    """Add, change, list users; log them in and out; check their sessions."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        audit: AuditLog,
        *,
        session_lifetime: timedelta = timedelta(hours=12),
        limits: LoginLimits | None = None,
        hasher: PasswordHasher | None = None,
        last_seen_resolution: timedelta = timedelta(minutes=1),
        roles: RoleBook | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit
        self.roles = roles  # custom roles too (None: the built-in ones only)
        self.session_lifetime = session_lifetime
        self.limits = limits or LoginLimits()
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self.last_seen_resolution = last_seen_resolution
        self._dummy_hash: str | None = None

    # -- users -------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        role: str,
        *,
        password: SecretValue | None = None,
        display_name: str | None = None,
        by: str,
    ) -> User:
        """Make a user; without a password they cannot log in (tokens only) until one is set."""
        check_name(name)
        role_name = self._role(role)
        password_hash = self._hash(password) if password is not None else None
        now = self.clock.now()
        user_id = new_id("usr")
        try:
            with self.db.write() as conn:
                clash = conn.execute(
                    select(api_tokens.c.id).where(
                        api_tokens.c.name == name,
                        api_tokens.c.user_id.is_(None),
                        api_tokens.c.revoked_at.is_(None),
                    )
                ).first()
                if clash is not None:  # the token acts under its name: it would act as the user
                    raise Conflict(
                        f"{name!r} is the name of a service token; revoke it or choose another "
                        "name",
                        field="name",
                        value=name,
                    )
                conn.execute(
                    insert(users).values(
                        id=user_id,
                        name=name,
                        display_name=display_name,
                        role=role_name,
                        password_hash=password_hash,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise Conflict(f"a user named {name!r} exists", field="name", value=name) from None
        self.audit.record(
            by,
            "user.add",
            f"user:{name}",
            {"role": role_name, "password_set": password is not None},
        )
        return self.get(name)

    def get(self, name: str) -> User:
        """The user called ``name``."""
        with self.db.read() as conn:
            row = conn.execute(select(*_USER_COLUMNS).where(users.c.name == name)).first()
        if row is None:
            raise NotFound(f"no user named {name!r}", field="name", value=name)
        return _user(row)

    def _role(self, role: str) -> str:
        return self.roles.parse(role) if self.roles is not None else parse_role(role).value

    def _permissions(self, role: str) -> frozenset[Permission] | None:
        if self.roles is not None:
            return self.roles.permissions(role)
        return builtin_permissions(role)

    def list_all(self) -> list[User]:
        """Every user, by name."""
        with self.db.read() as conn:
            return [
                _user(row) for row in conn.execute(select(*_USER_COLUMNS).order_by(users.c.name))
            ]

    def set_role(self, name: str, role: str, *, by: str) -> User:
        """Change a user's role; their sessions and tokens act with it from the next request."""
        role_name = self._role(role)
        before = self.get(name)
        self._update(name, role=role_name)
        self.audit.record(
            by, "user.set_role", f"user:{name}", {"before": before.role, "after": role_name}
        )
        return self.get(name)

    def set_display_name(self, name: str, display_name: str | None, *, by: str) -> User:
        """Change how a user is shown."""
        before = self.get(name)
        self._update(name, display_name=display_name)
        self.audit.record(
            by,
            "user.set_display_name",
            f"user:{name}",
            {"before": before.display_name, "after": display_name},
        )
        return self.get(name)

    def set_email(self, name: str, email: str | None, *, by: str) -> User:
        """Set (or clear) where a user's approval links are mailed."""
        address = (email or "").strip() or None
        if address is not None and (
            len(address) > 254 or address.count("@") != 1 or any(c.isspace() for c in address)
        ):
            raise InvalidInput(f"{email!r} is not an e-mail address", field="email", value=email)
        before = self.get(name)
        self._update(name, email=address)
        self.audit.record(
            by, "user.set_email", f"user:{name}", {"before": before.email, "after": address}
        )
        return self.get(name)

    def set_password(self, name: str, password: SecretValue, *, by: str) -> User:
        """Set a new password; the user's sessions are revoked."""
        password_hash = self._hash(password)
        self._update(name, password_hash=password_hash)
        revoked = self._revoke_sessions(name)
        self.audit.record(by, "user.set_password", f"user:{name}", {"sessions_revoked": revoked})
        return self.get(name)

    def change_password(
        self,
        name: str,
        current: SecretValue,
        new: SecretValue,
        *,
        keep_session: str | None = None,
        client: str | None = None,
    ) -> User:
        """``name`` replaces their own password, proving the current one.

        The new one follows the rules of :func:`check_password`. A wrong current password
        counts as a failed login (the same limits hold, so a stolen session guesses no faster
        than the login form). The user's other sessions are revoked; ``keep_session`` (the
        one making the change) stays. A user without a password (OIDC or tokens only) has
        none to change.
        """
        now = self.clock.now()
        client = client[:64] if client else None
        try:
            check_password(new)
        except InvalidInput as exc:
            raise InvalidInput(exc.message, field="new_password") from None
        key = hashlib.sha256(name.encode()).hexdigest()[:40]
        with self.db.read() as conn:
            row = conn.execute(
                select(users.c.id, users.c.password_hash).where(users.c.name == name)
            ).first()
        if row is None:
            raise NotFound(f"no user named {name!r}", field="name", value=name)
        if row.password_hash is None:
            raise Conflict(
                f"user {name!r} has no password to change (they sign in with OIDC or use "
                "tokens); an admin can set one with `quell user set-password`",
                field="current_password",
            )
        retry_after = self._limited(key, client, now)
        if retry_after is not None:
            self.audit.record(
                name,
                "user.change_password_failed",
                f"user:{name}",
                {"client": client, "reason": "rate"},
            )
            raise RateLimited("too many failed attempts; try again later", retry_after=retry_after)
        if not self._verify(row.password_hash, current.reveal()):
            with self.db.write() as conn:
                conn.execute(
                    insert(login_failures).values(id=new_id("lgf"), at=now, name=key, client=client)
                )
                conn.execute(
                    delete(login_failures).where(login_failures.c.at <= now - self.limits.window)
                )
            self.audit.record(
                name,
                "user.change_password_failed",
                f"user:{name}",
                {"client": client, "reason": "bad_password"},
            )
            raise InvalidInput("the current password is not right", field="current_password")
        if new == current:
            raise InvalidInput(
                "the new password is the same as the current one", field="new_password"
            )
        password_hash = self.hasher.hash(new.reveal())
        with self.db.write() as conn:
            conn.execute(
                update(users)
                .where(users.c.id == row.id)
                .values(password_hash=password_hash, updated_at=now)
            )
            others = update(user_sessions).where(
                user_sessions.c.user_id == row.id, user_sessions.c.revoked_at.is_(None)
            )
            if keep_session is not None:
                others = others.where(user_sessions.c.id != keep_session)
            revoked = int(conn.execute(others.values(revoked_at=now)).rowcount)
            conn.execute(delete(login_failures).where(login_failures.c.name == key))
        self.audit.record(
            name,
            "user.change_password",
            f"user:{name}",
            {"client": client, "sessions_revoked": revoked},
        )
        return self.get(name)

    def disable(self, name: str, *, by: str) -> User:
        """Disable a user: logins, sessions and their tokens are refused (sessions revoked)."""
        user = self.get(name)
        if user.disabled_at is None:
            self._update(name, disabled_at=self.clock.now())
        revoked = self._revoke_sessions(name)
        self.audit.record(by, "user.disable", f"user:{name}", {"sessions_revoked": revoked})
        return self.get(name)

    def enable(self, name: str, *, by: str) -> User:
        """Enable a disabled user again (their tokens work again; sessions stay revoked)."""
        self._update(name, disabled_at=None)
        self.audit.record(by, "user.enable", f"user:{name}", {})
        return self.get(name)

    def _update(self, name: str, **values: Any) -> None:
        with self.db.write() as conn:
            changed = conn.execute(
                update(users)
                .where(users.c.name == name)
                .values(updated_at=self.clock.now(), **values)
            ).rowcount
        if not changed:
            raise NotFound(f"no user named {name!r}", field="name", value=name)

    def _hash(self, password: SecretValue) -> str:
        check_password(password)
        return self.hasher.hash(password.reveal())

    # -- login -------------------------------------------------------------------------------

    def login(
        self, name: str, password: SecretValue, client: str | None = None
    ) -> tuple[SecretValue, Session]:
        """A new session for ``name`` if ``password`` is theirs: (session token, session).

        Every failure is AuthenticationRequired with the same message; past the failure limit
        for the name or the client address, RateLimited before the password is looked at.
        """
        now = self.clock.now()
        client = client[:64] if client else None
        # Failures are counted by a hash of the name as typed: someone who types a password
        # into the name field leaves no trace of it in the failures table.
        key = hashlib.sha256(name.encode()).hexdigest()[:40]
        with self.db.read() as conn:
            row = conn.execute(
                select(users.c.id, users.c.password_hash, users.c.disabled_at).where(
                    users.c.name == name
                )
            ).first()
        # Nor in the audit trail (append-only): an unknown name is recorded by its hash only.
        shown = name[:64] if row is not None else f"unknown:{key[:16]}"
        retry_after = self._limited(key, client, now)
        if retry_after is not None:
            self.audit.record(
                shown, "user.login_refused", f"user:{shown}", {"client": client, "reason": "rate"}
            )
            raise RateLimited("too many failed logins; try again later", retry_after=retry_after)
        candidate = password.reveal()
        stored = row.password_hash if row is not None and row.password_hash else None
        matches = self._verify(stored or self._dummy(), candidate) and stored is not None
        reason = (
            "unknown_user"
            if row is None
            else "no_password"
            if stored is None
            else "bad_password"
            if not matches
            else "disabled"
            if row.disabled_at is not None
            else None
        )
        if reason is not None:
            with self.db.write() as conn:
                conn.execute(
                    insert(login_failures).values(id=new_id("lgf"), at=now, name=key, client=client)
                )
                # Rows past the window count for nothing any more.
                conn.execute(
                    delete(login_failures).where(login_failures.c.at <= now - self.limits.window)
                )
            self.audit.record(
                shown, "user.login_failed", f"user:{shown}", {"client": client, "reason": reason}
            )
            raise AuthenticationRequired(_FAILED)
        if row is None or stored is None:  # unreachable: a reason was set above
            raise AuthenticationRequired(_FAILED)
        if self.hasher.check_needs_rehash(stored):
            with self.db.write() as conn:
                conn.execute(
                    update(users)
                    .where(users.c.id == row.id)
                    .values(password_hash=self.hasher.hash(candidate))
                )
        return self.open_session(row.id, name, client, method="password", forget_failures=key)

    def open_session(
        self,
        user_id: str,
        name: str,
        client: str | None,
        *,
        method: str,
        detail: Mapping[str, Any] | None = None,
        forget_failures: str | None = None,
    ) -> tuple[SecretValue, Session]:
        """A new session for a user who has just proven who they are (by ``method``:
        ``password``, ``oidc``); audited as ``user.login`` with ``detail`` added."""
        now = self.clock.now()
        client = client[:64] if client else None
        token = generate_token(SESSION_PREFIX)
        session = Session(
            id=new_id("ses"),
            user=name,
            created_at=now,
            expires_at=now + self.session_lifetime,
            last_seen_at=now,
            revoked_at=None,
            client=client,
        )
        with self.db.write() as conn:
            conn.execute(
                insert(user_sessions).values(
                    id=session.id,
                    user_id=user_id,
                    token_hash=hash_token(token.reveal()),
                    created_at=now,
                    expires_at=session.expires_at,
                    last_seen_at=now,
                    client=client,
                )
            )
            conn.execute(update(users).where(users.c.id == user_id).values(last_login_at=now))
            if forget_failures is not None:
                conn.execute(delete(login_failures).where(login_failures.c.name == forget_failures))
        self.audit.record(
            name,
            "user.login",
            f"user:{name}",
            {"client": client, "session": session.id, "method": method, **(detail or {})},
        )
        return token, session

    def _limited(self, name: str, client: str | None, now: datetime) -> int | None:
        """Seconds until another attempt is allowed, or None when one is allowed now."""
        since = now - self.limits.window
        checks = [(login_failures.c.name == name, self.limits.per_name)]
        if client is not None:
            checks.append((login_failures.c.client == client, self.limits.per_client))
        waits = []
        with self.db.read() as conn:
            for condition, limit in checks:
                times = list(
                    conn.execute(
                        select(login_failures.c.at)
                        .where(condition, login_failures.c.at > since)
                        .order_by(login_failures.c.at.desc())
                        .limit(limit)
                    ).scalars()
                )
                if len(times) >= limit:
                    # Allowed again once the oldest of the last ``limit`` leaves the window.
                    waits.append(times[-1] + self.limits.window - now)
        if not waits:
            return None
        return max(1, int(max(waits).total_seconds() + 0.999))

    def _verify(self, stored: str, candidate: str) -> bool:
        try:
            return self.hasher.verify(stored, candidate)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(generate_token().reveal())
        return self._dummy_hash

    # -- sessions ----------------------------------------------------------------------------

    def logout(self, session_id: str, *, by: str) -> None:
        """Revoke one session."""
        with self.db.write() as conn:
            conn.execute(
                update(user_sessions)
                .where(user_sessions.c.id == session_id, user_sessions.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
        self.audit.record(by, "user.logout", f"user:{by}", {"session": session_id})

    def _revoke_sessions(self, name: str) -> int:
        with self.db.write() as conn:
            user_id = select(users.c.id).where(users.c.name == name).scalar_subquery()
            return int(
                conn.execute(
                    update(user_sessions)
                    .where(user_sessions.c.user_id == user_id, user_sessions.c.revoked_at.is_(None))
                    .values(revoked_at=self.clock.now())
                ).rowcount
            )

    def sessions(self, name: str, *, include_ended: bool = False) -> list[Session]:
        """A user's sessions, oldest first (live ones only unless asked)."""
        query = (
            select(
                user_sessions.c.id,
                users.c.name.label("user"),
                user_sessions.c.created_at,
                user_sessions.c.expires_at,
                user_sessions.c.last_seen_at,
                user_sessions.c.revoked_at,
                user_sessions.c.client,
            )
            .select_from(user_sessions.join(users, user_sessions.c.user_id == users.c.id))
            .where(users.c.name == name)
            .order_by(user_sessions.c.created_at, user_sessions.c.id)
        )
        if not include_ended:
            query = query.where(
                user_sessions.c.revoked_at.is_(None),
                user_sessions.c.expires_at > self.clock.now(),
            )
        with self.db.read() as conn:
            return [Session(**row._asdict()) for row in conn.execute(query)]

    def authenticate(self, presented: str) -> Principal:
        """The principal behind a session token, or AuthenticationRequired."""
        if not is_well_formed(presented, SESSION_PREFIX):
            raise AuthenticationRequired("malformed session token")
        with self.db.read() as conn:
            row = conn.execute(
                select(
                    user_sessions.c.id,
                    user_sessions.c.expires_at,
                    user_sessions.c.last_seen_at,
                    user_sessions.c.revoked_at,
                    users.c.name,
                    users.c.role,
                    users.c.disabled_at,
                )
                .select_from(user_sessions.join(users, user_sessions.c.user_id == users.c.id))
                .where(user_sessions.c.token_hash == hash_token(presented))
            ).first()
        if row is None or row.revoked_at is not None:
            raise AuthenticationRequired("invalid or revoked session")
        now = self.clock.now()
        if row.expires_at <= now:
            raise AuthenticationRequired("the session has expired; log in again")
        if row.disabled_at is not None:
            raise AuthenticationRequired(f"user {row.name!r} is disabled")
        granted = self._permissions(row.role)
        if granted is None:
            raise AuthenticationRequired(f"user {row.name!r} has an unknown role {row.role!r}")
        if row.last_seen_at <= now - self.last_seen_resolution:
            with self.db.write() as conn:
                conn.execute(
                    update(user_sessions)
                    .where(
                        user_sessions.c.id == row.id,
                        user_sessions.c.last_seen_at == row.last_seen_at,
                    )
                    .values(last_seen_at=now, expires_at=now + self.session_lifetime)
                )
        return Principal(
            token_id=row.id,
            name=row.name,
            role=row.role,
            permissions=granted,
            user=row.name,
        )

    def count_failures(self) -> int:
        """Failed logins still on record (inside the window); for tests and status."""
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(login_failures)).scalar_one())


__all__ = [
    "MIN_PASSWORD_LENGTH",
    "SESSION_PREFIX",
    "LoginLimits",
    "Session",
    "User",
    "UserService",
    "check_password",
]
