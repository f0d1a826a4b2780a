"""API tokens: shown once, stored as a hash, refused at once when revoked.

A token reads ``qk_`` + 41 random base62 characters (240 bits) + a 6-character CRC32 checksum.
The prefix makes a leaked token recognizable to secret scanners; the checksum lets Quell refuse
a mistyped or truncated token without a database query. Only the SHA-256 of the token is
stored: the token has 240 bits of entropy, so a fast hash is enough and lookup is one indexed
equality. ``last_used_at`` is written at most once per ``last_used_resolution`` per token, so
authenticated reads do not turn into a write per request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.errors import AuthenticationRequired, Conflict, InvalidInput, NotFound
from quell.governance.permissions import (
    Permission,
    builtin_permissions,
    parse_role,
)

if TYPE_CHECKING:
    from quell.governance.roles import RoleBook
from quell.ids import new_id
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.schema import api_tokens, users

TOKEN_PREFIX = "qk_"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 41
_CHECK_LEN = 6
_BODY_RE = re.compile(rf"^[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, index = divmod(number, 62)
        chars.append(_BASE62[index])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECK_LEN)


def generate_token(prefix: str = TOKEN_PREFIX) -> SecretValue:
    """A new random token in Quell's format (``prefix``: ``qk_`` for API tokens, ``qs_`` for
    login sessions)."""
    body = _base62(secrets.randbits(240), _BODY_LEN)
    return SecretValue(f"{prefix}{body}{_checksum(body)}")


def is_well_formed(token: str, prefix: str = TOKEN_PREFIX) -> bool:
    """Whether ``token`` has Quell's shape (with ``prefix``) and a matching checksum."""
    if not token.startswith(prefix) or not _BODY_RE.match(token[len(prefix) :]):
        return False
    body = token[len(prefix) : len(prefix) + _BODY_LEN]
    return secrets.compare_digest(token[-_CHECK_LEN:], _checksum(body))


def hash_token(token: str) -> str:
    """What is stored for a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """A token's record; never the token itself."""

    id: str
    name: str
    role: str
    hint: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    user: str | None = None  # the user the token belongs to (its role is then the user's)

    def status(self, now: datetime) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do.

    A token's principal has its role's permissions; a signed intake request's principal
    (``source:<name>``) has no role and may only ingest into that source.
    """

    token_id: str
    name: str
    role: str | None  # a built-in role's name, or a custom role's
    permissions: frozenset[Permission]
    user: str | None = None  # the user behind a session or a user's token

    def can(self, permission: Permission) -> bool:
        """Whether the caller holds ``permission``."""
        return permission in self.permissions


_COLUMNS = (
    api_tokens.c.id,
    api_tokens.c.name,
    # A user's token acts with the user's current role, so that is the role it shows.
    func.coalesce(users.c.role, api_tokens.c.role).label("role"),
    api_tokens.c.hint,
    api_tokens.c.created_at,
    api_tokens.c.created_by,
    api_tokens.c.expires_at,
    api_tokens.c.last_used_at,
    api_tokens.c.revoked_at,
    users.c.name.label("user"),
)
_FROM = api_tokens.outerjoin(users, api_tokens.c.user_id == users.c.id)


def _select() -> Select[Any]:
    return select(*_COLUMNS).select_from(_FROM)


class TokenService:
    """Create, list, revoke and check API tokens."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        last_used_resolution: timedelta = timedelta(minutes=1),
        roles: RoleBook | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.roles = roles  # custom roles too (None: the built-in ones only)
        self.last_used_resolution = last_used_resolution

    def create(
        self,
        name: str,
        role: str,
        *,
        created_by: str | None = None,
        expires_in: timedelta | None = None,
        user: str | None = None,
    ) -> tuple[ApiToken, SecretValue]:
        """Make a token. The returned SecretValue is the only time the token exists in clear.

        ``user``: the token belongs to that user and acts with the user's current role (``role``
        may then be empty, or must name the user's role); it is refused while the user is
        disabled.
        """
        if not _NAME_RE.match(name):
            raise InvalidInput(
                "token name must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                field="name",
                value=name,
            )
        user_id: str | None = None
        if user is None:
            with self.db.read() as conn:
                clash = conn.execute(select(users.c.id).where(users.c.name == name)).first()
            if clash is not None:  # the token would act under that user's name
                raise Conflict(
                    f"{name!r} is a user's name; a service token needs a name of its own (or "
                    "make it the user's token)",
                    field="name",
                    value=name,
                )
        if user is not None:
            with self.db.read() as conn:
                owner = conn.execute(
                    select(users.c.id, users.c.role).where(users.c.name == user)
                ).first()
            if owner is None:
                raise NotFound(f"no user named {user!r}", field="user", value=user)
            if role and self._parse(role) != owner.role:
                raise InvalidInput(
                    f"a token of user {user!r} has the user's role ({owner.role}); "
                    "leave the role out",
                    field="role",
                    value=role,
                )
            user_id, role = owner.id, owner.role
        parsed_role = self._parse(role)
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInput("expires_in must be positive", field="expires_in")
        token = generate_token()
        now = self.clock.now()
        record = ApiToken(
            id=new_id("tok"),
            name=name,
            role=parsed_role,
            hint=token.reveal()[-4:],
            created_at=now,
            created_by=created_by,
            expires_at=now + expires_in if expires_in is not None else None,
            last_used_at=None,
            revoked_at=None,
            user=user,
        )
        try:
            with self.db.write() as conn:
                conn.execute(
                    insert(api_tokens).values(
                        id=record.id,
                        name=record.name,
                        role=record.role,
                        token_hash=hash_token(token.reveal()),
                        hint=record.hint,
                        created_at=record.created_at,
                        created_by=record.created_by,
                        expires_at=record.expires_at,
                        user_id=user_id,
                    )
                )
        except IntegrityError:
            raise Conflict(
                f"an unrevoked token named {name!r} exists (expired ones keep their name until "
                "revoked); revoke it or choose another name",
                field="name",
                value=name,
            ) from None
        return record, token

    def list_all(self, *, include_revoked: bool = False) -> list[ApiToken]:
        """Tokens by creation time; revoked ones only when asked."""
        query = _select().order_by(api_tokens.c.created_at, api_tokens.c.id)
        if not include_revoked:
            query = query.where(api_tokens.c.revoked_at.is_(None))
        with self.db.read() as conn:
            return [ApiToken(**row._asdict()) for row in conn.execute(query)]

    def get(self, name: str) -> ApiToken:
        """The active token called ``name``."""
        with self.db.read() as conn:
            row = conn.execute(
                _select().where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
            ).first()
        if row is None:
            raise NotFound(f"no active token named {name!r}", field="name", value=name)
        return ApiToken(**row._asdict())

    def revoke(self, name: str) -> ApiToken:
        """Revoke the active token called ``name``; it is refused from the next request on."""
        now = self.clock.now()
        with self.db.write() as conn:
            revoked = conn.execute(
                update(api_tokens)
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
                .returning(api_tokens.c.id)
            ).scalar()
            row = (
                conn.execute(_select().where(api_tokens.c.id == revoked)).first()
                if revoked is not None
                else None
            )
        if row is None:
            raise NotFound(f"no active token named {name!r}", field="name", value=name)
        return ApiToken(**row._asdict())

    def authenticate(self, presented: str) -> Principal:
        """The principal behind a presented token, or AuthenticationRequired."""
        if not is_well_formed(presented):
            raise AuthenticationRequired("malformed API token")
        with self.db.read() as conn:
            row = conn.execute(
                _select()
                .add_columns(users.c.disabled_at.label("user_disabled_at"))
                .where(api_tokens.c.token_hash == hash_token(presented))
            ).first()
        if row is None or row.revoked_at is not None:
            raise AuthenticationRequired("invalid or revoked API token")
        fields = row._asdict()
        user_disabled_at = fields.pop("user_disabled_at")
        record = ApiToken(**fields)
        if record.user is not None and user_disabled_at is not None:
            raise AuthenticationRequired(
                f"API token {record.name!r} belongs to user {record.user!r}, who is disabled"
            )
        now = self.clock.now()
        if record.status(now) == "expired":
            raise AuthenticationRequired(f"API token {record.name!r} has expired")
        granted = self._permissions(record.role)
        if granted is None:
            raise AuthenticationRequired(
                f"API token {record.name!r} has an unknown role {record.role!r}"
            )
        self._touch(record, now)
        return Principal(
            token_id=record.id,
            # A user's token acts as the user: audit, notes, custody and four eyes see one
            # person, whichever of their tokens or sessions they use.
            name=record.user or record.name,
            role=record.role,
            permissions=granted,
            user=record.user,
        )

    def _parse(self, role: str) -> str:
        return self.roles.parse(role) if self.roles is not None else parse_role(role).value

    def _permissions(self, role: str) -> frozenset[Permission] | None:
        if self.roles is not None:
            return self.roles.permissions(role)
        return builtin_permissions(role)

    def _touch(self, record: ApiToken, now: datetime) -> None:
        threshold = now - self.last_used_resolution
        if record.last_used_at is not None and record.last_used_at > threshold:
            return
        with self.db.write() as conn:
            conn.execute(
                update(api_tokens)
                .where(
                    and_(
                        api_tokens.c.id == record.id,
                        or_(
                            api_tokens.c.last_used_at.is_(None),
                            api_tokens.c.last_used_at <= threshold,
                        ),
                    )
                )
                .values(last_used_at=now)
            )
