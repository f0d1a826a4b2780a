"""Quell as the client of one OpenID Connect provider: discovery, keys, the code, the ID token.

:class:`ProviderClient` reads the provider's ``/.well-known/openid-configuration`` and its
JWKS on first use and keeps both for an hour; an ID token signed with a key id the kept JWKS
lacks fetches it again (the provider rotated its keys). It exchanges a code with its PKCE
verifier at the token endpoint and verifies the ID token that comes back: an asymmetric
signature by one of the provider's keys, ``iss``, ``aud`` (and ``azp``), ``exp`` and ``iat``
within the leeway, and the nonce.

The provider's URLs are the admin's configuration, so they are called as given (no SSRF
guard), with timeouts, answers of at most 1 MiB, no redirects, and TLS everywhere but on a
loopback address. A refusal is :class:`~quell.errors.AuthenticationRequired` with a stable
``reason``; a provider that cannot be reached or answers nonsense is
:class:`~quell.errors.UpstreamUnavailable`. Neither ever carries the code, a token or the
client secret.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import re
import ssl
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from quell import __version__
from quell.clock import Clock
from quell.errors import AuthenticationRequired, ConfigurationError, UpstreamUnavailable
from quell.sdk.secret import SecretValue
from quell.settings import OidcProviderSettings

LEEWAY = timedelta(seconds=60)
METADATA_TTL = 3600.0  # seconds a discovery document and a JWKS are kept
MAX_RESPONSE = 1024 * 1024  # the most a provider's answer may hold
# Asymmetric signatures only: an ID token signed with the client secret (HS256) or unsigned
# ("none") is refused whatever the provider advertises.
SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def refused(message: str, reason: str, provider: str) -> AuthenticationRequired:
    """A refused sign-in: ``message`` for the person, ``reason`` for machines and the audit."""
    return AuthenticationRequired(message, reason=reason, provider=provider)


def error_code(value: object) -> str | None:
    """An OAuth ``error`` value fit to show (``invalid_grant``), or None."""
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else None


@dataclass(frozen=True)
class ProviderMetadata:
    """What discovery told about a provider, as Quell uses it."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: frozenset[str]


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _signing_keys(keys: KeySet, kid: str | None) -> list[Key]:
    return [
        key for key in keys if (kid is None or key.kid == kid) and key.get("use") in (None, "sig")
    ]


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class ProviderClient:
    """Talks to one configured provider; keeps its discovery document and keys."""

    def __init__(
        self, name: str, config: OidcProviderSettings, clock: Clock, *, leeway: timedelta = LEEWAY
    ) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.leeway = leeway
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    # -- HTTP --------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if self.config.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(self.config.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"OIDC provider {self.name!r}: cannot read ca_file {self.config.ca_file}: "
                    f"{exc}",
                    field="ca_file",
                ) from exc
        return httpx.AsyncClient(
            timeout=self.config.timeout_seconds,
            verify=verify,
            follow_redirects=False,
            headers={"User-Agent": f"quell/{__version__}", "Accept": "application/json"},
        )

    async def _call(self, what: str, method: str, url: str, **request: Any) -> tuple[int, Any]:
        """(status, parsed JSON or None) of one call; UpstreamUnavailable when unreachable.

        Nothing of the request (which may carry the code or the client secret) goes into the
        error: only what was asked for and the kind of failure.
        """
        async with self._client() as client:
            try:
                async with client.stream(method, url, **request) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE:
                            raise UpstreamUnavailable(
                                f"OIDC provider {self.name!r} answered more than "
                                f"{MAX_RESPONSE} bytes for its {what}",
                                provider=self.name,
                            )
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(
                    f"cannot reach OIDC provider {self.name!r} for its {what}: "
                    f"{type(exc).__name__}",
                    provider=self.name,
                ) from None
        try:
            parsed = orjson.loads(bytes(body)) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        return response.status_code, parsed

    def _url(self, url: object, what: str) -> str:
        """``url`` if it is https (or http to a loopback address), else UpstreamUnavailable."""
        if isinstance(url, str):
            parts = urlsplit(url)
            if parts.hostname and (
                parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname))
            ):
                return url
        raise UpstreamUnavailable(
            f"OIDC provider {self.name!r} gave no usable {what} (https, or http to a loopback "
            "address)",
            provider=self.name,
            field=what,
        )

    # -- discovery and keys ------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """The provider's discovery document, fetched at most once an hour."""
        if self._metadata is not None and self._age(self._metadata_at) < METADATA_TTL:
            return self._metadata
        issuer = self._url(self.config.issuer.rstrip("/"), "issuer")
        url = issuer + "/.well-known/openid-configuration"
        status, document = await self._call("discovery document", "GET", url)
        if status != 200 or not isinstance(document, dict):
            raise UpstreamUnavailable(
                f"OIDC provider {self.name!r} answered {status} without a discovery document "
                f"at {url}",
                provider=self.name,
            )
        announced = document.get("issuer")
        # OpenID Connect Discovery 1.0, 4.3: the document must speak for the issuer asked.
        if not isinstance(announced, str) or announced.rstrip("/") != issuer:
            raise UpstreamUnavailable(
                f"OIDC provider {self.name!r} calls itself {announced!r}, not the issuer "
                f"configured ({self.config.issuer!r})",
                provider=self.name,
            )
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise UpstreamUnavailable(
                f"OIDC provider {self.name!r} does not support PKCE with S256",
                provider=self.name,
            )
        offered = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = frozenset(
            alg for alg in offered if isinstance(alg, str) and alg in SIGNING_ALGORITHMS
        )
        if not algorithms:
            raise UpstreamUnavailable(
                f"OIDC provider {self.name!r} signs ID tokens with none of "
                f"{', '.join(sorted(SIGNING_ALGORITHMS))}",
                provider=self.name,
            )
        self._metadata = ProviderMetadata(
            issuer=announced,
            authorization_endpoint=self._url(
                document.get("authorization_endpoint"), "authorization_endpoint"
            ),
            token_endpoint=self._url(document.get("token_endpoint"), "token_endpoint"),
            jwks_uri=self._url(document.get("jwks_uri"), "jwks_uri"),
            algorithms=algorithms,
        )
        self._metadata_at = self.clock.monotonic()
        return self._metadata

    async def signing_keys(self, kid: str | None) -> list[Key]:
        """The keys that may have signed a token with ``kid`` (every signing key without one);
        the JWKS is fetched again when it has no key by that id."""
        keys = self._keys
        fetched = False
        if keys is None or self._age(self._keys_at) >= METADATA_TTL:
            keys = await self._fetch_keys()
            fetched = True
        matching = _signing_keys(keys, kid)
        if not matching and kid is not None and not fetched:
            matching = _signing_keys(await self._fetch_keys(), kid)
        return matching

    async def _fetch_keys(self) -> KeySet:
        metadata = await self.metadata()
        status, document = await self._call("JWKS", "GET", metadata.jwks_uri)
        if status != 200 or not isinstance(document, dict):
            raise UpstreamUnavailable(
                f"OIDC provider {self.name!r} answered {status} without a JWKS",
                provider=self.name,
            )
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise UpstreamUnavailable(
                f"OIDC provider {self.name!r} published an unusable JWKS: {type(exc).__name__}",
                provider=self.name,
            ) from None
        self._keys, self._keys_at = keys, self.clock.monotonic()
        return keys

    def _age(self, since: float) -> float:
        return self.clock.monotonic() - since

    # -- the code and the ID token -----------------------------------------------------------

    async def exchange(self, code: str, verifier: SecretValue, redirect_uri: str) -> str:
        """The ID token the token endpoint gives for ``code`` and the PKCE ``verifier``."""
        config = self.config
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier.reveal(),
        }
        method = config.token_auth or (
            "client_secret_basic" if config.client_secret is not None else "none"
        )
        headers: dict[str, str] = {}
        secret = config.client_secret.reveal() if config.client_secret is not None else ""
        if method == "client_secret_basic":
            # RFC 6749, 2.3.1: both are form-encoded before they are joined.
            pair = f"{quote(config.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif method == "client_secret_post":
            form |= {"client_id": config.client_id, "client_secret": secret}
        else:
            form["client_id"] = config.client_id
        status, answer = await self._call(
            "token endpoint", "POST", metadata.token_endpoint, data=form, headers=headers
        )
        if status != 200:
            shown = error_code(answer.get("error") if isinstance(answer, dict) else None)
            raise refused(
                f"the OIDC provider refused to exchange the code ({shown or status})",
                "token_refused",
                self.name,
            )
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str) or not id_token:
            raise UpstreamUnavailable(
                f"OIDC provider {self.name!r} answered the code without an ID token "
                "(is 'openid' among its scopes?)",
                provider=self.name,
                reason="no_id_token",
            )
        return id_token

    async def verify(self, raw: str, nonce: str) -> dict[str, Any]:
        """The claims of the ID token ``raw`` once its signature and claims hold; else a
        refusal that says which check failed."""
        metadata = await self.metadata()

        def invalid(what: str, reason: str) -> AuthenticationRequired:
            return refused(f"the ID token is not valid: {what}", reason, self.name)

        try:
            header = jws.extract_compact(raw.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError):
            raise invalid("it is not a signed JWT", "token_malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in metadata.algorithms:
            raise invalid(f"it is signed with {alg!r}, which is not accepted", "token_algorithm")
        if kid is not None and not isinstance(kid, str):
            raise invalid("its key id is not a string", "token_malformed")
        keys = await self.signing_keys(kid)
        if not keys:
            raise invalid(f"the provider publishes no key {kid!r} to check it", "unknown_key")
        claims: dict[str, Any] | None = None
        for key in keys:
            try:
                claims = dict(jwt.decode(raw, key, algorithms=[alg]).claims)
                break
            except (JoseError, ValueError):
                continue
        if claims is None:
            raise invalid("its signature does not verify", "bad_signature")
        if claims.get("iss") != metadata.issuer:
            raise invalid("it was issued by another issuer", "bad_issuer")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        client_id = self.config.client_id
        if not isinstance(audiences, list) or client_id not in audiences:
            raise invalid("it was issued for another client (aud)", "bad_audience")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != client_id:
            raise invalid("it was issued for another party (azp)", "bad_audience")
        now = self.clock.now().timestamp()
        leeway = self.leeway.total_seconds()
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        if exp is None or exp + leeway <= now:
            raise invalid("it has expired", "token_expired")
        if iat is None or iat - leeway > now:
            raise invalid("it was issued in the future (check the clocks)", "token_not_yet_valid")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode(), nonce.encode()
        ):
            raise invalid("its nonce is not this sign-in's", "nonce_mismatch")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise invalid("it names no subject (sub)", "token_malformed")
        return claims


__all__ = [
    "SIGNING_ALGORITHMS",
    "ProviderClient",
    "ProviderMetadata",
    "error_code",
    "refused",
]
