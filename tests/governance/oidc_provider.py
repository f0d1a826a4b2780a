"""A small OpenID Connect provider for the sign-in tests, built on Authlib's server.

Authlib's ``AuthorizationServer`` speaks the protocol: the authorization endpoint checks the
client, its registered redirect URI, the scope, the nonce and the PKCE challenge (S256 is
required here, as it is of a public client by RFC 9700); the token endpoint authenticates the
client (basic, post or none), checks the code, its redirect URI and its PKCE verifier, and
signs the ID token (RS256). What this module adds is storage (in memory), a sign-in form
with users and passwords, discovery, the JWKS, and a few ways to misbehave on purpose, for
the tests of refusals: claims to put in the next ID tokens (another audience, another
nonce), a key to sign with that is not published, keys that rotate.

Times in the tokens come from the test's clock, so Quell (on the same clock) and the
provider agree without either looking at the wall.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import flask
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidRequestError,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from quell.clock import ManualClock


@dataclass
class ProviderUser:
    """Someone who can sign in at the provider."""

    username: str
    password: str
    subject: str
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    """A registered client (Quell)."""

    client_id: str
    client_secret: str | None
    redirect_uris: list[str]
    auth_method: str = "client_secret_basic"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = {"openid", "profile", "email"}
        return " ".join(part for part in scope.split() if part in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and client_secret == self.client_secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint != "token" or method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):  # type: ignore[misc]
    """An authorization code issued and not yet exchanged."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    subject: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None


class _Server(AuthorizationServer):  # type: ignore[misc]
    provider: OidcProvider


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012

    @property
    def provider(self) -> OidcProvider:
        return self.server.provider  # type: ignore[no-any-return]

    def save_authorization_code(self, code: str, request: Any) -> None:
        payload = request.payload
        self.provider.codes[code] = Code(
            code=code,
            client_id=request.client.get_client_id(),
            redirect_uri=payload.redirect_uri,
            scope=request.scope,
            subject=request.user.subject,
            nonce=payload.data.get("nonce"),
            code_challenge=payload.data.get("code_challenge"),
            code_challenge_method=payload.data.get("code_challenge_method"),
            auth_time=int(self.provider.clock.now().timestamp()),
        )

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        found = self.provider.codes.get(code)
        return found if found is not None and found.client_id == client.client_id else None

    def delete_authorization_code(self, authorization_code: Code) -> None:
        self.provider.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> ProviderUser | None:
        return self.provider.by_subject(authorization_code.subject)


class _S256Required(CodeChallenge):  # type: ignore[misc]
    """PKCE for every client, and only S256."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE must use 'code_challenge_method=S256'")
        super().validate_code_challenge(grant, redirect_uri)


class _IdToken(OpenIDCode):  # type: ignore[misc]
    def __init__(self, provider: OidcProvider) -> None:
        super().__init__(require_nonce=True)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return any(code.nonce == nonce for code in self.provider.codes.values())

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.provider.sign_with or self.provider.key

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        key = self.provider.sign_with or self.provider.key
        return {"alg": "RS256", "kid": str(key.kid)}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(self.provider.clock.now().timestamp())
        return {
            "iss": self.provider.issuer,
            "aud": [client.get_client_id()],
            "iat": now,
            "exp": now + 300,
        }

    def generate_user_info(self, user: ProviderUser, scope: str) -> UserInfo:
        scopes = set(scope.split())
        info = UserInfo(sub=user.subject)
        for name, value in user.claims.items():
            if name in {"email", "email_verified"} and "email" not in scopes:
                continue
            if name not in {"email", "email_verified"} and "profile" not in scopes:
                continue
            info[name] = value
        # Claims set by a test win over everything (the user info is merged last).
        info.update(self.provider.tamper)
        return info


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log in the test output."""


class OidcProvider:
    """The provider: register clients and users, then :meth:`serving` it."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.key = self._new_key("key-1")
        self.published = [self.key]
        self.sign_with: RSAKey | None = None  # sign ID tokens with this (unpublished) key
        self.tamper: dict[str, Any] = {}  # claims the next ID tokens carry instead
        self.clients: dict[str, Client] = {}
        self.users: dict[str, ProviderUser] = {}
        self.codes: dict[str, Code] = {}
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.token_requests: list[dict[str, str]] = []  # the token endpoint's forms, as sent
        self.issued_id_tokens: list[str] = []
        self.url = ""
        self.app = self._build()

    @staticmethod
    def _new_key(kid: str) -> RSAKey:
        return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})

    @property
    def issuer(self) -> str:
        """The issuer: the provider's base URL."""
        return self.url

    def add_client(
        self,
        client_id: str,
        secret: str | None,
        redirect_uris: list[str],
        auth_method: str = "client_secret_basic",
    ) -> Client:
        """Register a client."""
        client = Client(client_id, secret, redirect_uris, auth_method)
        self.clients[client_id] = client
        return client

    def add_user(self, username: str, password: str, **claims: Any) -> ProviderUser:
        """Someone who can sign in; ``sub`` is ``sub-<username>`` unless a claim gives it."""
        subject = str(claims.pop("sub", f"sub-{username}"))
        user = ProviderUser(username, password, subject, claims)
        self.users[username] = user
        return user

    def by_subject(self, subject: str) -> ProviderUser | None:
        """The user with that subject."""
        return next((user for user in self.users.values() if user.subject == subject), None)

    def rotate_key(self) -> RSAKey:
        """Sign with a new key from now on and publish only it."""
        number = len(self.published) + 1
        self.key = self._new_key(f"key-{number}")
        self.published = [self.key]
        return self.key

    def _build(self) -> flask.Flask:
        app = flask.Flask(__name__)
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": 300}
        server = _Server(
            app,
            query_client=self.clients.get,
            save_token=lambda token, request: None,
        )
        server.provider = self
        server.register_grant(_CodeGrant, [_S256Required(required=True), _IdToken(self)])

        @app.get("/.well-known/openid-configuration")
        def discovery() -> flask.Response:
            self.discovery_fetches += 1
            return flask.jsonify(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.url}/authorize",
                    "token_endpoint": f"{self.url}/token",
                    "jwks_uri": f"{self.url}/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_basic",
                        "client_secret_post",
                        "none",
                    ],
                }
            )

        @app.get("/jwks")
        def jwks() -> flask.Response:
            self.jwks_fetches += 1
            return flask.jsonify(KeySet(list(self.published)).as_dict(private=False))

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Any:
            try:
                grant = server.get_consent_grant()
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            if flask.request.method == "GET":
                return self._form(error=None)
            user = self.users.get(flask.request.form.get("username", ""))
            if user is None or user.password != flask.request.form.get("password"):
                return self._form(error="wrong username or password"), 401
            if flask.request.form.get("action") == "deny":
                return server.create_authorization_response(grant=grant, grant_user=None)
            return server.create_authorization_response(grant=grant, grant_user=user)

        @app.post("/token")
        def token() -> Any:
            self.token_requests.append(dict(flask.request.form))
            response = server.create_token_response()
            if response.status_code == 200:
                self.issued_id_tokens.append(response.get_json()["id_token"])
            return response

        return app

    def _form(self, error: str | None) -> str:
        shown = f"<p class=error>{html.escape(error)}</p>" if error else ""
        return (
            "<!doctype html><title>Sign in</title>"
            f"{shown}<form method=post>"
            "<input name=username><input name=password type=password>"
            "<button name=action value=allow>Sign in</button>"
            "<button name=action value=deny>Cancel</button></form>"
        )

    @contextmanager
    def serving(self) -> Iterator[OidcProvider]:
        """Serve on 127.0.0.1 (a free port) while the block runs."""
        server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler
        )
        self.url = f"http://127.0.0.1:{server.server_port}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
