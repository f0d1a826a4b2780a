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

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.errors import AuthenticationRequired, Conflict, InvalidInput, NotFound
from quell.governance.permissions import Permission, Role, parse_role, permissions_of
from quell.ids import new_id
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.schema import api_tokens

TOKEN_PREFIX = "qk_"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 41
_CHECK_LEN = 6
_TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, index = divmod(number, 62)
        chars.append(_BASE62[index])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECK_LEN)


def generate_token() -> SecretValue:
    """A new random token in Quell's format."""
    body = _base62(secrets.randbits(240), _BODY_LEN)
    return SecretValue(f"{TOKEN_PREFIX}{body}{_checksum(body)}")


def is_well_formed(token: str) -> bool:
    """Whether ``token`` has Quell's shape and a matching checksum."""
    if not _TOKEN_RE.match(token):
        return False
    body = token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + _BODY_LEN]
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
    role: Role | None
    permissions: frozenset[Permission]

    def can(self, permission: Permission) -> bool:
        """Whether the caller holds ``permission``."""
        return permission in self.permissions


_COLUMNS = (
    api_tokens.c.id,
    api_tokens.c.name,
    api_tokens.c.role,
    api_tokens.c.hint,
    api_tokens.c.created_at,
    api_tokens.c.created_by,
    api_tokens.c.expires_at,
    api_tokens.c.last_used_at,
    api_tokens.c.revoked_at,
)


class TokenService:
    """Create, list, revoke and check API tokens."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        last_used_resolution: timedelta = timedelta(minutes=1),
    ) -> None:
        self.db = db
        self.clock = clock
        self.last_used_resolution = last_used_resolution

    def create(
        self,
        name: str,
        role: str,
        *,
        created_by: str | None = None,
        expires_in: timedelta | None = None,
    ) -> tuple[ApiToken, SecretValue]:
        """Make a token. The returned SecretValue is the only time the token exists in clear."""
        if not _NAME_RE.match(name):
            raise InvalidInput(
                "token name must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                field="name",
                value=name,
            )
        parsed_role = parse_role(role)
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInput("expires_in must be positive", field="expires_in")
        token = generate_token()
        now = self.clock.now()
        record = ApiToken(
            id=new_id("tok"),
            name=name,
            role=parsed_role.value,
            hint=token.reveal()[-4:],
            created_at=now,
            created_by=created_by,
            expires_at=now + expires_in if expires_in is not None else None,
            last_used_at=None,
            revoked_at=None,
        )
        try:
            with self.db.write() as conn:
                conn.execute(
                    insert(api_tokens).values(
                        token_hash=hash_token(token.reveal()),
                        **{column.name: getattr(record, column.name) for column in _COLUMNS},
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
        query = select(*_COLUMNS).order_by(api_tokens.c.created_at, api_tokens.c.id)
        if not include_revoked:
            query = query.where(api_tokens.c.revoked_at.is_(None))
        with self.db.read() as conn:
            return [ApiToken(**row._asdict()) for row in conn.execute(query)]

    def get(self, name: str) -> ApiToken:
        """The active token called ``name``."""
        with self.db.read() as conn:
            row = conn.execute(
                select(*_COLUMNS).where(
                    api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None)
                )
            ).first()
        if row is None:
            raise NotFound(f"no active token named {name!r}", field="name", value=name)
        return ApiToken(**row._asdict())

    def revoke(self, name: str) -> ApiToken:
        """Revoke the active token called ``name``; it is refused from the next request on."""
        now = self.clock.now()
        with self.db.write() as conn:
            row = conn.execute(
                update(api_tokens)
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
                .returning(*_COLUMNS)
            ).first()
        if row is None:
            raise NotFound(f"no active token named {name!r}", field="name", value=name)
        return ApiToken(**row._asdict())

    def authenticate(self, presented: str) -> Principal:
        """The principal behind a presented token, or AuthenticationRequired."""
        if not is_well_formed(presented):
            raise AuthenticationRequired("malformed API token")
        with self.db.read() as conn:
            row = conn.execute(
                select(*_COLUMNS).where(api_tokens.c.token_hash == hash_token(presented))
            ).first()
        if row is None or row.revoked_at is not None:
            raise AuthenticationRequired("invalid or revoked API token")
        record = ApiToken(**row._asdict())
        now = self.clock.now()
        if record.status(now) == "expired":
            raise AuthenticationRequired(f"API token {record.name!r} has expired")
        try:
            role = Role(record.role)
        except ValueError:
            raise AuthenticationRequired(
                f"API token {record.name!r} has an unknown role {record.role!r}"
            ) from None
        self._touch(record, now)
        return Principal(
            token_id=record.id, name=record.name, role=role, permissions=permissions_of(role)
        )

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
