"""The OIDC sign-in service against the local provider, on both backends (no Quell server:
the test plays the browser at the provider and hands the callback's values to the service)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from quell.clock import ManualClock
from quell.errors import (
    AuthenticationRequired,
    ConfigurationError,
    InvalidInput,
    RateLimited,
    UpstreamUnavailable,
)
from quell.governance.oidc import LoginStart, OidcService, check_redirect_to, pkce_challenge
from quell.runtime import Runtime
from quell.sdk.secret import SecretValue
from quell.settings import OidcProviderSettings
from quell.store.schema import oidc_logins
from tests.governance.oidc_provider import OidcProvider

CALLBACK = "http://127.0.0.1:9/api/auth/oidc/corp/callback"  # never called: the test is the browser
ALICE = "pw-alice"  # her password at the provider


@pytest.fixture
def provider(clock: ManualClock) -> Iterator[OidcProvider]:
    oidc = OidcProvider(clock)
    with oidc.serving():
        oidc.add_client("quell", "client-secret", [CALLBACK])
        oidc.add_user("alice", ALICE, preferred_username="alice")
        yield oidc


def _service(runtime: Runtime, provider: OidcProvider, **options: Any) -> OidcService:
    settings = {"issuer": provider.issuer, "client_id": "quell", "redirect_uri": CALLBACK}
    return OidcService(
        runtime.db,
        runtime.clock,
        users=runtime.users,
        audit=runtime.audit,
        secret_box=runtime.secret_box,
        providers={
            "corp": OidcProviderSettings(
                **{
                    **settings,
                    "client_secret": SecretValue("client-secret"),
                    "link_by": "name",  # the test provider assigns its usernames
                    **options,
                }
            )
        },
        public_url="http://127.0.0.1:9",
    )


def _at_provider(start: LoginStart, username: str = "alice", password: str = ALICE) -> str:
    """Sign in at the provider as a browser would; the code it sends back."""
    with httpx.Client(timeout=10) as browser:
        back = browser.post(
            start.authorization_url,
            data={"username": username, "password": password, "action": "allow"},
        )
    assert back.status_code == 302, back.text
    query = parse_qs(urlsplit(back.headers["location"]).query)
    assert query["state"] == [start.state]
    return query["code"][0]


def test_pkce_challenge_is_rfc_7636s_s256() -> None:
    # RFC 7636, Appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize(
    "value",
    ["//evil.example", "https://evil.example/x", "/\\evil.example", "relative", "/a b", "/\x00"],
)
def test_redirect_to_is_a_path_on_this_server_only(value: str) -> None:
    with pytest.raises(InvalidInput, match="redirect_to"):
        check_redirect_to(value)


def test_redirect_to_keeps_a_local_path() -> None:
    assert check_redirect_to("/incidents/inc_1?tab=timeline#notes") == (
        "/incidents/inc_1?tab=timeline#notes"
    )
    assert check_redirect_to("") is None
    assert check_redirect_to(None) is None


def test_a_login_keeps_only_the_states_hash_and_a_sealed_verifier(
    runtime: Runtime, provider: OidcProvider
) -> None:
    service = _service(runtime, provider)
    start = asyncio.run(service.begin("corp", "/cases"))
    query = parse_qs(urlsplit(start.authorization_url).query)
    assert query["client_id"] == ["quell"]
    assert query["redirect_uri"] == [CALLBACK]
    assert query["scope"] == ["openid profile email"]
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert start.callback_path == "/api/auth/oidc/corp/callback"
    with runtime.db.read() as conn:
        row = conn.execute(select(oidc_logins)).one()
    assert start.state not in str(tuple(row))
    assert row.nonce == query["nonce"][0]
    assert row.redirect_to == "/cases"
    assert row.expires_at == runtime.clock.now() + service.login_lifetime
    verifier = runtime.secret_box.open(row.code_verifier, purpose=f"oidc_login:{row.state_hash}")
    assert pkce_challenge(verifier.reveal()) == query["code_challenge"][0]
    with pytest.raises(ConfigurationError):  # bound to its own login: it opens nowhere else
        runtime.secret_box.open(row.code_verifier, purpose="oidc_login:another")


def test_a_state_is_used_once_even_by_two_callbacks_at_the_same_time(
    runtime: Runtime, provider: OidcProvider
) -> None:
    runtime.users.add("alice", "analyst", by="test")
    service = _service(runtime, provider)
    start = asyncio.run(service.begin("corp"))
    code = _at_provider(start)

    async def both() -> list[Any]:
        calls = [
            service.finish("corp", state=start.state, code=code, browser_state=start.state)
            for _ in range(2)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(both())
    signed_in = [result for result in results if not isinstance(result, BaseException)]
    refused = [result for result in results if isinstance(result, AuthenticationRequired)]
    assert len(signed_in) == 1
    assert len(refused) == 1
    assert refused[0].details["reason"] == "state_unknown"
    assert signed_in[0].user.name == "alice"
    assert len(provider.token_requests) == 1  # the loser never reached the provider


def test_logins_in_flight_are_bounded_and_expired_ones_are_cleared(
    runtime: Runtime, provider: OidcProvider, clock: ManualClock
) -> None:
    service = _service(runtime, provider)
    service.max_pending = 3
    for _ in range(3):
        asyncio.run(service.begin("corp"))
    with pytest.raises(RateLimited, match="too many sign-ins in flight"):
        asyncio.run(service.begin("corp"))
    clock.advance(service.login_lifetime)
    asyncio.run(service.begin("corp"))
    with runtime.db.read() as conn:
        assert len(conn.execute(select(oidc_logins)).all()) == 1


def test_a_provider_that_names_another_issuer_or_speaks_plain_http_is_refused(
    runtime: Runtime, provider: OidcProvider
) -> None:
    # The provider calls itself http://127.0.0.1:PORT; configured as localhost, it is another.
    other_name = provider.issuer.replace("127.0.0.1", "localhost")
    service = _service(runtime, provider, issuer=other_name)
    with pytest.raises(UpstreamUnavailable, match="not the issuer configured"):
        asyncio.run(service.begin("corp"))
    insecure = _service(runtime, provider, issuer="http://idp.example")
    with pytest.raises(UpstreamUnavailable, match="https, or http to a loopback address"):
        asyncio.run(insecure.begin("corp"))
    with runtime.db.read() as conn:
        assert conn.execute(select(oidc_logins)).all() == []


def test_a_name_that_cannot_be_a_user_is_not_provisioned(
    runtime: Runtime, provider: OidcProvider
) -> None:
    provider.add_user("eve", "pw-eve", preferred_username="eve smith")
    service = _service(runtime, provider, provision=True)
    start = asyncio.run(service.begin("corp"))
    code = _at_provider(start, "eve", "pw-eve")
    with pytest.raises(AuthenticationRequired, match="cannot be a Quell user name") as refused:
        asyncio.run(service.finish("corp", state=start.state, code=code, browser_state=start.state))
    assert refused.value.details["reason"] == "name_invalid"
    assert runtime.users.list_all() == []


def test_a_user_linked_to_another_identity_is_not_taken_over(
    runtime: Runtime, provider: OidcProvider
) -> None:
    runtime.users.add("alice", "admin", by="test")
    service = _service(runtime, provider)
    start = asyncio.run(service.begin("corp"))
    asyncio.run(
        service.finish(
            "corp", state=start.state, code=_at_provider(start), browser_state=start.state
        )
    )
    # Someone else at the provider who calls themselves alice too.
    provider.add_user("mallory", "pw-mallory", preferred_username="alice")
    start = asyncio.run(service.begin("corp"))
    code = _at_provider(start, "mallory", "pw-mallory")
    with pytest.raises(AuthenticationRequired, match="linked to another sign-in identity") as no:
        asyncio.run(service.finish("corp", state=start.state, code=code, browser_state=start.state))
    assert no.value.details["reason"] == "identity_conflict"
    assert len(runtime.users.sessions("alice")) == 1
