"""OpenID Connect sign-in: the authorization-code flow with PKCE, against configured providers.

A login has two halves. :meth:`OidcService.begin` makes a state, a nonce and a PKCE verifier
(S256), keeps the state's SHA-256, the nonce and the verifier (sealed with the secret box) in
``oidc_logins`` for ten minutes, and answers the provider's authorization URL. The browser
signs in there and comes back with ``code`` and ``state``; :meth:`OidcService.finish` takes
the login row (once: it is deleted as it is read), checks that the same browser came back,
has the provider's client (:mod:`quell.governance.oidc_client`) exchange the code with the
verifier and verify the ID token, finds the Quell user and opens a session through
:meth:`UserService.open_session`, audited as ``user.login`` with ``method: oidc``.

Which user an identity is: the user linked to its (issuer, subject) before; else, at its first
sign-in, the user found by ``link_by`` (the name in ``username_claim``, or a verified email),
which is then linked for good; else, with ``provision``, a new user without a password and
with ``default_role``. A disabled user is refused. Every refusal is
:class:`~quell.errors.AuthenticationRequired` with a sentence a person can act on and a stable
``reason``, audited as ``user.login_failed``; the code, the tokens and the verifier never reach
an error, a log line or the audit trail.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NotFound,
    QuellError,
    RateLimited,
)
from quell.governance.oidc_client import LEEWAY, ProviderClient, error_code, refused
from quell.governance.permissions import parse_role
from quell.governance.users import Session, User, UserService, check_name
from quell.sdk.secret import SecretValue
from quell.settings import OidcProviderSettings
from quell.store.database import Database
from quell.store.schema import oidc_logins, users

if TYPE_CHECKING:
    from quell.governance.audit import AuditLog
    from quell.governance.secrets import SecretBox

CALLBACK_PATH = "/api/auth/oidc/{provider}/callback"
LOGIN_LIFETIME = timedelta(minutes=10)
MAX_PENDING = 10_000  # logins in flight at once: the login route is public


@dataclass(frozen=True)
class LoginStart:
    """Where to send the browser, and the state it must come back with."""

    provider: str
    authorization_url: str
    state: str  # also handed to the browser (a cookie) so that only it can finish the login
    expires_at: datetime
    callback_path: str  # the path of the redirect URI, where the browser comes back


@dataclass(frozen=True)
class LoginResult:
    """A finished sign-in: a session for the user, and where the login asked to go next."""

    provider: str
    token: SecretValue
    session: Session
    user: User
    redirect_to: str | None


@dataclass
class _Attempt:
    """What is known about a callback so far, for the audit trail of a refusal."""

    provider: str
    client: str | None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636, 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def check_redirect_to(value: str | None) -> str | None:
    """``value`` if it is a path on this server (``/cases?x=1``), None if empty; else
    InvalidInput: a login never sends the browser to another site."""
    if not value:
        return None
    parts = urlsplit(value)
    if (
        len(value) > 1024
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or parts.scheme
        or parts.netloc
        or any(ord(char) < 0x21 or ord(char) == 0x7F for char in value)
    ):
        raise InvalidInput(
            "redirect_to must be a path on this server, starting with a single '/'",
            field="redirect_to",
        )
    return value


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


class OidcService:
    """Sign-in through the configured OpenID Connect providers."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        users: UserService,
        audit: AuditLog,
        secret_box: SecretBox,
        providers: Mapping[str, OidcProviderSettings],
        public_url: str,
        login_lifetime: timedelta = LOGIN_LIFETIME,
        leeway: timedelta = LEEWAY,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.db = db
        self.clock = clock
        self.users = users
        self.audit = audit
        self.secret_box = secret_box
        self.providers = dict(providers)
        self.public_url = public_url.rstrip("/")
        self.login_lifetime = login_lifetime
        self.leeway = leeway
        self.max_pending = max_pending
        self._clients: dict[str, ProviderClient] = {}

    # -- configuration -----------------------------------------------------------------------

    def config(self, provider: str) -> OidcProviderSettings:
        """The settings of ``provider``, or NotFound."""
        found = self.providers.get(provider)
        if found is None:
            raise NotFound(f"no OIDC provider named {provider!r}", field="provider", value=provider)
        return found

    def redirect_uri(self, provider: str) -> str:
        """Where ``provider`` sends the browser back: as configured, else on the public URL."""
        configured = self.config(provider).redirect_uri
        return configured or self.public_url + CALLBACK_PATH.format(provider=provider)

    def client(self, provider: str) -> ProviderClient:
        """The client of ``provider``, which keeps its discovery document and keys."""
        found = self._clients.get(provider)
        if found is None:
            found = ProviderClient(provider, self.config(provider), self.clock, leeway=self.leeway)
            self._clients[provider] = found
        return found

    # -- the first half: send the browser to the provider -----------------------------------

    async def begin(self, provider: str, redirect_to: str | None = None) -> LoginStart:
        """Start a login at ``provider``; ``redirect_to`` (a path here) is handed back at the
        end, for the console to go to."""
        config = self.config(provider)
        target = check_redirect_to(redirect_to)
        metadata = await self.client(provider).metadata()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters of RFC 7636's 43 to 128
        state_hash = _state_hash(state)
        now = self.clock.now()
        expires_at = now + self.login_lifetime
        await asyncio.to_thread(
            self._store_login,
            state_hash,
            provider,
            nonce,
            SecretValue(verifier),
            target,
            now,
            expires_at,
        )
        scopes = list(dict.fromkeys(["openid", *config.scopes]))
        redirect_uri = self.redirect_uri(provider)
        url = _with_query(
            metadata.authorization_endpoint,
            {
                "response_type": "code",
                "client_id": config.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            },
        )
        return LoginStart(
            provider=provider,
            authorization_url=url,
            state=state,
            expires_at=expires_at,
            callback_path=urlsplit(redirect_uri).path or "/",
        )

    def _store_login(
        self,
        state_hash: str,
        provider: str,
        nonce: str,
        verifier: SecretValue,
        redirect_to: str | None,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        # The purpose binds the sealed verifier to its login: copied to another row, it does
        # not open.
        sealed = self.secret_box.seal(verifier, purpose=f"oidc_login:{state_hash}")
        with self.db.write() as conn:
            conn.execute(delete(oidc_logins).where(oidc_logins.c.expires_at <= now))
            pending = conn.execute(select(func.count()).select_from(oidc_logins)).scalar_one()
            if pending >= self.max_pending:
                raise RateLimited(
                    "too many sign-ins in flight; try again in a few minutes",
                    retry_after=int(self.login_lifetime.total_seconds()),
                )
            conn.execute(
                insert(oidc_logins).values(
                    state_hash=state_hash,
                    provider=provider,
                    nonce=nonce,
                    code_verifier=sealed,
                    redirect_to=redirect_to,
                    created_at=now,
                    expires_at=expires_at,
                )
            )

    # -- the second half: the browser is back --------------------------------------------------

    async def finish(
        self,
        provider: str,
        *,
        state: str | None,
        code: str | None,
        error: str | None = None,
        browser_state: str | None = None,
        bind_browser: bool = True,
        client: str | None = None,
    ) -> LoginResult:
        """Finish the login whose ``state`` came back with ``code`` (or the provider's
        ``error``) and open a session.

        With ``bind_browser`` the login must come back to the user agent that started it:
        ``browser_state`` (the cookie :meth:`begin`'s caller set) must equal ``state``.
        """
        self.config(provider)  # NotFound for a provider that is not configured: no audit
        attempt = _Attempt(provider=provider, client=client[:64] if client else None)
        try:
            return await self._finish(
                attempt, state, code, error, browser_state if bind_browser else state
            )
        except QuellError as exc:
            reason = str(exc.details.get("reason") or exc.code.value)
            await asyncio.to_thread(self._audit_refusal, attempt, reason)
            raise

    async def _finish(
        self,
        attempt: _Attempt,
        state: str | None,
        code: str | None,
        error: str | None,
        browser_state: str | None,
    ) -> LoginResult:
        provider = attempt.provider
        config = self.config(provider)
        if not state or len(state) > 256:
            raise refused("the sign-in came back without its state", "state_missing", provider)
        login = await asyncio.to_thread(self._take_login, _state_hash(state))
        if login is None or login.provider != provider:
            raise refused(
                "unknown or already used sign-in state; start the sign-in again",
                "state_unknown",
                provider,
            )
        if login.expires_at <= self.clock.now():
            raise refused(
                "the sign-in took too long and expired; start it again", "state_expired", provider
            )
        if browser_state is None or not hmac.compare_digest(browser_state, state):
            raise refused(
                "this browser did not start the sign-in (its login cookie is missing or "
                "another); start it again from the same browser",
                "browser_mismatch",
                provider,
            )
        if error is not None:
            shown = error_code(error) or "error"
            attempt.extra["provider_error"] = shown
            raise refused(
                f"the OIDC provider did not sign the user in ({shown})", "provider_error", provider
            )
        if not code or len(code) > 4096:
            raise refused("the sign-in came back without a code", "code_missing", provider)
        verifier = await asyncio.to_thread(
            self.secret_box.open, login.code_verifier, purpose=f"oidc_login:{login.state_hash}"
        )
        remote = self.client(provider)
        raw = await remote.exchange(code, verifier, self.redirect_uri(provider))
        claims = await remote.verify(raw, login.nonce)
        attempt.extra["oidc_subject"] = claims["sub"][:255]
        user = await asyncio.to_thread(self._resolve_user, attempt, config, claims)
        token, session = await asyncio.to_thread(
            self.users.open_session,
            user.id,
            user.name,
            attempt.client,
            method="oidc",
            detail={"provider": provider},
        )
        return LoginResult(
            provider=provider,
            token=token,
            session=session,
            user=user,
            redirect_to=login.redirect_to,
        )

    def _take_login(self, state_hash: str) -> Any:
        """The login row of ``state_hash``, deleted as it is read: a state works once."""
        with self.db.write() as conn:
            row = conn.execute(
                select(oidc_logins).where(oidc_logins.c.state_hash == state_hash)
            ).first()
            if row is None:
                return None
            taken = conn.execute(
                delete(oidc_logins).where(oidc_logins.c.state_hash == state_hash)
            ).rowcount
        return row if taken == 1 else None

    # -- who the identity is in Quell --------------------------------------------------------

    def _resolve_user(
        self, attempt: _Attempt, config: OidcProviderSettings, claims: Mapping[str, Any]
    ) -> User:
        """The Quell user of the identity in ``claims``: linked before, linked now, or made."""
        provider = attempt.provider
        issuer: str = claims["iss"]
        subject: str = claims["sub"]
        row = self._find(users.c.oidc_issuer == issuer, users.c.oidc_subject == subject)
        if row is not None:
            return self._usable(attempt, row.name)
        claimed = claims.get(config.username_claim)
        claimed_name = claimed if isinstance(claimed, str) else None
        if claimed_name is not None:
            attempt.extra["claimed_name"] = claimed_name[:64]
        candidate = None
        if config.link_by == "name" and claimed_name:
            candidate = self._find(users.c.name == claimed_name)
        elif config.link_by == "email":
            candidate = self._by_email(provider, claims)
        if candidate is not None:
            attempt.user = candidate.name
            if candidate.oidc_subject is not None:
                raise refused(
                    f"user {candidate.name!r} is linked to another sign-in identity",
                    "identity_conflict",
                    provider,
                )
            self._usable(attempt, candidate.name)
            self._link(attempt, candidate.id, issuer, subject)
            self.audit.record(
                f"oidc:{provider}",
                "user.oidc_link",
                f"user:{candidate.name}",
                {"provider": provider, "issuer": issuer, "subject": subject, "by": config.link_by},
            )
            return self.users.get(candidate.name)
        if not config.provision:
            what = f" ({config.username_claim} {claimed_name!r})" if claimed_name else ""
            raise refused(
                f"no Quell user matches this sign-in{what}, and provider {provider!r} does not "
                "create users: ask an admin to add the user",
                "unknown_user",
                provider,
            )
        return self._provision(attempt, config, claims, claimed_name)

    def _find(self, *conditions: Any) -> Any:
        with self.db.read() as conn:
            return conn.execute(
                select(users.c.id, users.c.name, users.c.oidc_subject).where(*conditions)
            ).first()

    def _by_email(self, provider: str, claims: Mapping[str, Any]) -> Any:
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            return None
        if claims.get("email_verified") is not True:
            raise refused(
                "the provider has not verified this sign-in's email, so it names no user",
                "email_unverified",
                provider,
            )
        with self.db.read() as conn:
            found = conn.execute(
                select(users.c.id, users.c.name, users.c.oidc_subject)
                .where(func.lower(users.c.email) == email.lower())
                .limit(2)
            ).all()
        if len(found) > 1:
            raise refused(
                "more than one Quell user has this sign-in's email", "ambiguous_email", provider
            )
        return found[0] if found else None

    def _usable(self, attempt: _Attempt, name: str) -> User:
        attempt.user = name
        user = self.users.get(name)
        if user.disabled_at is not None:
            raise refused(f"user {name!r} is disabled", "disabled", attempt.provider)
        return user

    def _link(
        self, attempt: _Attempt, user_id: str, issuer: str, subject: str, **values: Any
    ) -> None:
        """Tie the identity to the user, unless a sign-in beside this one tied another."""
        try:
            with self.db.write() as conn:
                linked = conn.execute(
                    update(users)
                    .where(users.c.id == user_id, users.c.oidc_subject.is_(None))
                    .values(
                        oidc_issuer=issuer,
                        oidc_subject=subject,
                        updated_at=self.clock.now(),
                        **values,
                    )
                ).rowcount
        except IntegrityError:  # the identity went to another user meanwhile
            linked = 0
        if linked != 1:
            raise refused(
                f"user {attempt.user!r} is linked to another sign-in identity",
                "identity_conflict",
                attempt.provider,
            )

    def _provision(
        self,
        attempt: _Attempt,
        config: OidcProviderSettings,
        claims: Mapping[str, Any],
        name: str | None,
    ) -> User:
        provider = attempt.provider
        if not name:
            raise refused(
                f"the sign-in has no {config.username_claim!r} claim to name a new user",
                "name_missing",
                provider,
            )
        try:
            check_name(name)
        except InvalidInput:
            raise refused(
                f"{config.username_claim} {name[:64]!r} cannot be a Quell user name",
                "name_invalid",
                provider,
            ) from None
        try:
            roles = self.users.roles
            role = (
                roles.parse(config.default_role)
                if roles is not None
                else parse_role(config.default_role).value
            )
        except InvalidInput as exc:
            raise ConfigurationError(
                f"OIDC provider {provider!r}: default_role: {exc.message}", field="default_role"
            ) from None
        display = claims.get("name")
        try:
            created = self.users.add(
                name,
                role,
                display_name=display[:128] if isinstance(display, str) and display else None,
                by=f"oidc:{provider}",
            )
        except Conflict:
            # Another sign-in of the same identity may have just made it; else the name is
            # someone else's.
            row = self._find(
                users.c.oidc_issuer == claims["iss"], users.c.oidc_subject == claims["sub"]
            )
            if row is not None:
                return self._usable(attempt, row.name)
            raise refused(
                f"a user named {name!r} exists and is not this sign-in's", "name_taken", provider
            ) from None
        attempt.user = created.name
        email = claims.get("email")
        verified = isinstance(email, str) and claims.get("email_verified") is True
        extra = {"email": email[:254]} if verified and isinstance(email, str) else {}
        self._link(attempt, created.id, claims["iss"], claims["sub"], **extra)
        self.audit.record(
            f"oidc:{provider}",
            "user.oidc_link",
            f"user:{created.name}",
            {
                "provider": provider,
                "issuer": claims["iss"],
                "subject": claims["sub"],
                "by": "provision",
            },
        )
        return self.users.get(created.name)

    def _audit_refusal(self, attempt: _Attempt, reason: str) -> None:
        actor = attempt.user or f"oidc:{attempt.provider}"
        self.audit.record(
            actor,
            "user.login_failed",
            f"user:{attempt.user}" if attempt.user else f"oidc:{attempt.provider}",
            {
                "client": attempt.client,
                "method": "oidc",
                "provider": attempt.provider,
                "reason": reason,
                **attempt.extra,
            },
        )


__all__ = [
    "CALLBACK_PATH",
    "LoginResult",
    "LoginStart",
    "OidcService",
    "check_redirect_to",
    "pkce_challenge",
]
