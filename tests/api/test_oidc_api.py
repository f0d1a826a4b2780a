"""Signing in with OpenID Connect over real HTTP, against a real provider, on both backends.

The provider (tests/governance/oidc_provider.py) is Authlib's authorization server on a
loopback port; Quell's API runs in uvicorn. A test's "browser" is an httpx client with a
cookie jar that follows each redirect by hand: Quell's login, the provider's sign-in form,
the provider's redirect back to the callback.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select, update
from structlog.testing import capture_logs

from quell.api.app import create_app
from quell.api.server import bind_socket, bound_url
from quell.clock import ManualClock
from quell.governance.audit import AuditEvent
from quell.governance.oidc import pkce_challenge
from quell.runtime import Runtime
from quell.sdk.secret import SecretValue
from quell.settings import OidcProviderSettings
from quell.store.schema import oidc_logins, users
from tests.fixtures.servers import LiveServer, start_server
from tests.governance.oidc_provider import OidcProvider

PROVIDER = "corp"
CLIENT_SECRET = "CANARY-client-secret-4b1d"
ALICE_PASSWORD = "alice-at-the-provider"


@dataclasses.dataclass
class Quell:
    """A Quell API server configured for the provider."""

    server: LiveServer
    runtime: Runtime

    def browser(self) -> httpx.Client:
        """A user agent with its own cookie jar that does not follow redirects by itself."""
        return httpx.Client(base_url=self.server.url, timeout=10, follow_redirects=False)


@pytest.fixture
def provider(clock: ManualClock) -> Iterator[OidcProvider]:
    """The OIDC provider, serving, with alice (who has a Quell user once a test adds one)."""
    oidc = OidcProvider(clock)
    with oidc.serving():
        oidc.add_user(
            "alice",
            ALICE_PASSWORD,
            preferred_username="alice",
            name="Alice Adams",
            email="alice@example.com",
            email_verified=True,
        )
        yield oidc


@pytest.fixture
def start_quell(runtime: Runtime, provider: OidcProvider) -> Iterator[Callable[..., Quell]]:
    """``start_quell(**provider_settings)``: Quell's API with the provider configured as
    ``corp`` (client ``quell``, registered at the provider with Quell's callback)."""
    servers: list[LiveServer] = []

    def start(**options: Any) -> Quell:
        sock = bind_socket("127.0.0.1", 0)
        url = bound_url(sock)
        auth = options.get("token_auth") or "client_secret_basic"
        secret = None if auth == "none" else CLIENT_SECRET
        provider.add_client(
            "quell", secret, [f"{url}/api/auth/oidc/{PROVIDER}/callback"], auth_method=auth
        )
        settings = OidcProviderSettings(
            **{
                "issuer": provider.issuer,
                "client_id": "quell",
                "client_secret": SecretValue(secret) if secret else None,
                "link_by": "name",  # the provider here is ours: its usernames are assigned
                **options,
            }
        )
        configured = dataclasses.replace(
            runtime,
            settings=runtime.settings.model_copy(
                update={"public_url": url, "oidc_providers": {PROVIDER: settings}}
            ),
        )
        server = start_server(create_app(configured), sock)
        servers.append(server)
        return Quell(server, configured)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def quell(start_quell: Callable[..., Quell]) -> Quell:
    """Quell with the provider's defaults: link by name, no provisioning."""
    return start_quell()


@pytest.fixture
def alice(runtime: Runtime) -> str:
    runtime.users.add("alice", "analyst", by="test")
    return "alice"


def authorize(
    browser: httpx.Client,
    provider: OidcProvider,
    *,
    username: str = "alice",
    password: str = ALICE_PASSWORD,
    action: str = "allow",
    redirect_to: str | None = None,
) -> str:
    """Start at Quell, sign in at the provider; the callback URL the provider sends back to."""
    params = {"redirect_to": redirect_to} if redirect_to else None
    started = browser.get(f"/api/auth/oidc/{PROVIDER}/login", params=params)
    assert started.status_code == 302, started.text
    assert started.headers["cache-control"] == "no-store"
    location = started.headers["location"]
    assert location.startswith(f"{provider.issuer}/authorize?")
    page = browser.get(location)
    assert page.status_code == 200
    assert "<form" in page.text
    back = browser.post(
        location, data={"username": username, "password": password, "action": action}
    )
    assert back.status_code == 302, back.text
    callback: str = back.headers["location"]
    assert callback.startswith(
        f"{str(browser.base_url).rstrip('/')}/api/auth/oidc/{PROVIDER}/callback?"
    )
    return callback


def sign_in(browser: httpx.Client, provider: OidcProvider, **options: Any) -> httpx.Response:
    """The whole round trip: the callback's answer."""
    return browser.get(authorize(browser, provider, **options))


def _refusal(response: httpx.Response, reason: str) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == "unauthenticated"
    assert body["reason"] == reason, body
    assert body["provider"] == PROVIDER
    return body


def _events(runtime: Runtime, action: str) -> list[AuditEvent]:
    """Audit events of exactly ``action``, oldest first."""
    return [
        event for event in reversed(runtime.audit.list_all(action=action)) if event.action == action
    ]


def _login_failures(runtime: Runtime) -> list[dict[str, Any]]:
    return [event.detail for event in _events(runtime, "user.login_failed")]


def test_sign_in_gives_a_session_that_calls_authenticated_routes(
    quell: Quell, provider: OidcProvider, alice: str
) -> None:
    with quell.browser() as browser:
        callback = authorize(browser, provider, redirect_to="/incidents?status=open")
        assert browser.cookies.get("quell_oidc_state")  # this browser started the sign-in
        answer = browser.get(callback)
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert not browser.cookies.get("quell_oidc_state")  # cleared once used
    body = answer.json()
    assert body["token"].startswith("qs_")
    assert (body["user"], body["role"], body["provider"]) == ("alice", "analyst", PROVIDER)
    assert body["redirect_to"] == "/incidents?status=open"
    code = parse_qs(urlsplit(callback).query)["code"][0]
    assert code not in answer.text

    with quell.server.client(body["token"]) as session:
        me = session.get("/api/whoami").json()
        assert (me["name"], me["role"]) == ("alice", "analyst")
        assert session.get("/api/users").status_code == 403  # an analyst's session
        assert session.post("/api/logout").status_code == 204
        assert session.get("/api/whoami").status_code == 401

    (login,) = _events(quell.runtime, "user.login")
    assert login.actor == "alice"
    assert login.detail["method"] == "oidc"
    assert login.detail["provider"] == PROVIDER
    (link,) = _events(quell.runtime, "user.oidc_link")
    assert link.detail["by"] == "name"
    with quell.runtime.db.read() as conn:
        row = conn.execute(select(users.c.oidc_issuer, users.c.oidc_subject)).one()
        assert conn.execute(select(oidc_logins)).all() == []  # the login was used up
    assert tuple(row) == (provider.issuer, "sub-alice")
    # The verifier Quell sent matches the challenge it asked the provider to remember.
    (sent,) = provider.token_requests
    query = parse_qs(urlsplit(callback).query)
    assert sent["code"] == query["code"][0]
    assert len(sent["code_verifier"]) >= 43


def test_a_linked_identity_signs_in_by_subject_even_when_its_name_changes(
    quell: Quell, provider: OidcProvider, alice: str
) -> None:
    with quell.browser() as browser:
        assert sign_in(browser, provider).status_code == 200
    provider.users["alice"].claims["preferred_username"] = "alice.adams"
    with quell.browser() as browser:
        again = sign_in(browser, provider)
    assert again.status_code == 200, again.text
    assert again.json()["user"] == "alice"
    assert len(_events(quell.runtime, "user.oidc_link")) == 1


def test_a_callback_is_refused_when_replayed_forged_or_from_another_browser(
    quell: Quell, provider: OidcProvider, alice: str
) -> None:
    with quell.browser() as browser:
        callback = authorize(browser, provider)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        assert browser.get(callback).status_code == 200
        replayed = browser.get(callback)
        _refusal(replayed, "state_unknown")
        assert code not in replayed.text
        forged = browser.get(
            f"/api/auth/oidc/{PROVIDER}/callback", params={"state": "made-up", "code": code}
        )
        _refusal(forged, "state_unknown")
        missing = browser.get(f"/api/auth/oidc/{PROVIDER}/callback", params={"code": code})
        _refusal(missing, "state_missing")

        # A callback URL handed to someone else (login CSRF) does not sign them in.
        stolen = authorize(browser, provider)
    with quell.browser() as other:
        _refusal(other.get(stolen), "browser_mismatch")
    with quell.browser() as browser:  # and the state it carried is used up
        browser.cookies.set("quell_oidc_state", parse_qs(urlsplit(stolen).query)["state"][0])
        _refusal(browser.get(stolen), "state_unknown")
    reasons = [detail["reason"] for detail in _login_failures(quell.runtime)]
    assert reasons == [
        "state_unknown",
        "state_unknown",
        "state_missing",
        "browser_mismatch",
        "state_unknown",
    ]


def test_a_sign_in_that_took_too_long_is_refused(
    quell: Quell, provider: OidcProvider, alice: str, clock: ManualClock
) -> None:
    with quell.browser() as browser:
        callback = authorize(browser, provider)
        clock.advance(timedelta(minutes=10, seconds=1))
        body = _refusal(browser.get(callback), "state_expired")
    assert "start it again" in body["detail"]


def test_a_cancelled_sign_in_is_refused_with_the_providers_reason(
    quell: Quell, provider: OidcProvider, alice: str
) -> None:
    with quell.browser() as browser:
        body = _refusal(sign_in(browser, provider, action="deny"), "provider_error")
    assert "access_denied" in body["detail"]
    assert _login_failures(quell.runtime)[0]["provider_error"] == "access_denied"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"aud": ["someone-else"]}, "bad_audience"),
        ({"aud": ["quell", "someone-else"]}, "bad_audience"),  # several, and no azp
        ({"nonce": "not-the-one-quell-sent"}, "nonce_mismatch"),
        ({"iss": "https://idp.example.org"}, "bad_issuer"),
        ({"exp": 1_000}, "token_expired"),
        ({"iat": 4_000_000_000}, "token_not_yet_valid"),
    ],
    ids=["audience", "audiences", "nonce", "issuer", "expired", "future"],
)
def test_an_id_token_with_a_wrong_claim_is_refused(
    quell: Quell, provider: OidcProvider, alice: str, tamper: dict[str, Any], reason: str
) -> None:
    provider.tamper = tamper
    with quell.browser() as browser:
        body = _refusal(sign_in(browser, provider), reason)
    assert body["detail"].startswith("the ID token is not valid: ")
    assert _events(quell.runtime, "user.login") == []
    assert quell.runtime.users.sessions("alice") == []


def test_an_id_token_with_a_bad_signature_or_an_unpublished_key_is_refused(
    quell: Quell, provider: OidcProvider, alice: str
) -> None:
    provider.sign_with = OidcProvider._new_key(str(provider.key.kid))  # same kid, other key
    with quell.browser() as browser:
        _refusal(sign_in(browser, provider), "bad_signature")
    fetches = provider.jwks_fetches
    provider.sign_with = OidcProvider._new_key("rogue")
    with quell.browser() as browser:
        _refusal(sign_in(browser, provider), "unknown_key")
    assert provider.jwks_fetches == fetches + 1  # looked for the key once more, in vain


def test_keys_are_cached_and_fetched_again_when_the_provider_rotates_them(
    quell: Quell, provider: OidcProvider, alice: str
) -> None:
    for _ in range(2):
        with quell.browser() as browser:
            assert sign_in(browser, provider).status_code == 200
    assert (provider.discovery_fetches, provider.jwks_fetches) == (1, 1)
    provider.rotate_key()
    for _ in range(2):
        with quell.browser() as browser:
            assert sign_in(browser, provider).status_code == 200
    assert (provider.discovery_fetches, provider.jwks_fetches) == (1, 2)


def test_the_provider_refuses_a_code_with_the_wrong_pkce_verifier(
    quell: Quell, provider: OidcProvider, alice: str
) -> None:
    with quell.browser() as browser:
        callback = authorize(browser, provider)
        # Swap the verifier Quell keeps for this login (sealed as Quell seals it) for another.
        with quell.runtime.db.read() as conn:
            state_hash = conn.execute(select(oidc_logins.c.state_hash)).scalar_one()
        wrong = quell.runtime.secret_box.seal(
            SecretValue("w" * 64), purpose=f"oidc_login:{state_hash}"
        )
        with quell.runtime.db.write() as conn:
            conn.execute(update(oidc_logins).values(code_verifier=wrong))
        body = _refusal(browser.get(callback), "token_refused")
    assert "invalid_grant" in body["detail"]
    assert provider.token_requests[-1]["code_verifier"] == "w" * 64


def test_the_verifier_quell_sends_is_the_one_behind_its_challenge(
    quell: Quell, provider: OidcProvider, alice: str
) -> None:
    with quell.browser() as browser:
        started = browser.get(f"/api/auth/oidc/{PROVIDER}/login")
        challenge = parse_qs(urlsplit(started.headers["location"]).query)
        assert challenge["code_challenge_method"] == ["S256"]
        with quell.runtime.db.read() as conn:
            row = conn.execute(select(oidc_logins)).one()
        kept = quell.runtime.secret_box.open(
            row.code_verifier, purpose=f"oidc_login:{row.state_hash}"
        )
        assert pkce_challenge(kept.reveal()) == challenge["code_challenge"][0]
        assert kept.reveal().encode() not in row.code_verifier  # sealed, not stored as is
        location = started.headers["location"]
        browser.get(location)
        back = browser.post(
            location, data={"username": "alice", "password": ALICE_PASSWORD, "action": "allow"}
        )
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        # Without the verifier, the provider does not hand out tokens for the code.
        refused = httpx.post(
            f"{provider.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": f"{quell.server.url}/api/auth/oidc/{PROVIDER}/callback",
            },
            auth=("quell", CLIENT_SECRET),
        )
        assert refused.status_code == 400
        assert "code_verifier" in refused.json()["error_description"]
        assert browser.get(back.headers["location"]).status_code == 200
    assert provider.token_requests[-1]["code_verifier"] == kept.reveal()


def test_a_disabled_user_cannot_sign_in(quell: Quell, provider: OidcProvider, alice: str) -> None:
    quell.runtime.users.disable("alice", by="admin")
    with quell.browser() as browser:
        body = _refusal(sign_in(browser, provider), "disabled")
    assert body["detail"] == "user 'alice' is disabled"
    (failure,) = _events(quell.runtime, "user.login_failed")
    assert failure.actor == "alice"
    assert quell.runtime.users.sessions("alice") == []


def test_without_provisioning_an_unknown_user_is_refused_with_the_reason(
    quell: Quell, provider: OidcProvider
) -> None:
    provider.add_user("bob", "bob-at-the-provider", preferred_username="bob")
    with quell.browser() as browser:
        body = _refusal(
            sign_in(browser, provider, username="bob", password="bob-at-the-provider"),
            "unknown_user",
        )
    assert "no Quell user matches this sign-in (preferred_username 'bob')" in body["detail"]
    assert "does not create users" in body["detail"]
    assert quell.runtime.users.list_all() == []
    (failure,) = _login_failures(quell.runtime)
    assert failure["claimed_name"] == "bob"
    assert failure["oidc_subject"] == "sub-bob"


def test_provisioning_creates_the_user_once_with_the_default_role(
    start_quell: Callable[..., Quell], provider: OidcProvider
) -> None:
    quell = start_quell(provision=True, default_role="approver", link_by="none")
    provider.add_user(
        "carol",
        "carol-at-the-provider",
        preferred_username="carol",
        name="Carol C.",
        email="carol@example.com",
        email_verified=True,
    )
    for _ in range(2):
        with quell.browser() as browser:
            answer = sign_in(browser, provider, username="carol", password="carol-at-the-provider")
        assert answer.status_code == 200, answer.text
        assert (answer.json()["user"], answer.json()["role"]) == ("carol", "approver")
    (carol,) = quell.runtime.users.list_all()
    assert (carol.name, carol.role, carol.display_name) == ("carol", "approver", "Carol C.")
    assert not carol.has_password
    with quell.runtime.db.read() as conn:
        assert conn.execute(select(users.c.email)).scalar_one() == "carol@example.com"
    (added,) = _events(quell.runtime, "user.add")
    assert added.actor == f"oidc:{PROVIDER}"

    # With link_by none, an existing name is never taken over by a new identity.
    quell.runtime.users.add("dave", "admin", by="test")
    provider.add_user("dave", "dave-at-the-provider", preferred_username="dave")
    with quell.browser() as browser:
        _refusal(sign_in(browser, provider, username="dave", password="dave-at-the-provider"),
                 "name_taken")  # fmt: skip


def test_linking_by_email_needs_a_verified_email(
    start_quell: Callable[..., Quell], provider: OidcProvider, runtime: Runtime
) -> None:
    quell = start_quell(link_by="email")
    runtime.users.add("a.adams", "author", by="test")
    with runtime.db.write() as conn:
        conn.execute(update(users).values(email="Alice@Example.com"))
    provider.users["alice"].claims["email_verified"] = False
    with quell.browser() as browser:
        _refusal(sign_in(browser, provider), "email_unverified")
    provider.users["alice"].claims["email_verified"] = True
    with quell.browser() as browser:
        answer = sign_in(browser, provider)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"] == "a.adams"


@pytest.mark.parametrize("token_auth", ["client_secret_post", "none"])
def test_other_client_authentications_at_the_token_endpoint(
    start_quell: Callable[..., Quell], provider: OidcProvider, alice: str, token_auth: str
) -> None:
    quell = start_quell(token_auth=token_auth)
    with quell.browser() as browser:
        answer = sign_in(browser, provider)
    assert answer.status_code == 200, answer.text
    sent = provider.token_requests[-1]
    assert sent["client_id"] == "quell"
    assert ("client_secret" in sent) is (token_auth == "client_secret_post")


def test_login_checks_the_provider_and_where_to_go_after(quell: Quell) -> None:
    with quell.browser() as browser:
        unknown = browser.get("/api/auth/oidc/nowhere/login")
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == "no OIDC provider named 'nowhere'"
        assert browser.get("/api/auth/oidc/nowhere/callback?state=x&code=y").status_code == 404
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "cases"):
            refused = browser.get(
                f"/api/auth/oidc/{PROVIDER}/login", params={"redirect_to": target}
            )
            assert refused.status_code == 422, target
            assert refused.json()["field"] == "redirect_to"
    with quell.runtime.db.read() as conn:
        assert conn.execute(select(oidc_logins)).all() == []


def test_an_unreachable_provider_is_a_clear_502(
    start_quell: Callable[..., Quell], provider: OidcProvider
) -> None:
    sock = bind_socket("127.0.0.1", 0)
    closed = bound_url(sock)
    sock.close()  # nothing listens there any more
    quell = start_quell(issuer=closed)
    with quell.browser() as browser:
        answer = browser.get(f"/api/auth/oidc/{PROVIDER}/login")
    assert answer.status_code == 502
    assert answer.json()["detail"] == (
        f"cannot reach OIDC provider '{PROVIDER}' for its discovery document: ConnectError"
    )


def test_no_code_token_verifier_or_client_secret_reaches_logs_audit_or_answers(
    quell: Quell,
    provider: OidcProvider,
    alice: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="quell")  # Quell's own, not the test provider's
    # uvicorn's own access line (the whole URL, the callback's code with it) is off in Quell's
    # server (quell/api/server.py: access_log=False leaves "uvicorn.access" without handlers).
    # But pytest hangs its capture handlers on every logger that does not propagate, and
    # uvicorn takes any handler as "log access": the line then lands in caplog whenever an
    # earlier test in the process (a CLI one) left the root logger at INFO. Keep it off here.
    monkeypatch.setattr(logging.getLogger("uvicorn.access"), "disabled", True)
    answers: list[str] = []
    codes: list[str] = []
    with capture_logs() as logs:
        for tamper in ({}, {"nonce": "other"}, {}):
            provider.tamper = tamper
            with quell.browser() as browser:
                callback = authorize(browser, provider)
                codes.append(parse_qs(urlsplit(callback).query)["code"][0])
                answers.append(browser.get(callback).text)
                answers.append(browser.get(callback).text)  # replayed
    secrets = [
        CLIENT_SECRET,
        *codes,
        *(request["code_verifier"] for request in provider.token_requests),
        *provider.issued_id_tokens,
    ]
    assert len(provider.issued_id_tokens) == 3
    outputs = [
        *answers,
        str(logs),
        caplog.text,
        *capsys.readouterr(),
        *(str(event.as_dict()) for event in quell.runtime.audit.list_all(limit=1000)),
    ]
    assert any("nonce_mismatch" in output for output in outputs)  # the scenario ran
    for output in outputs:
        for secret in secrets:
            assert secret not in output
