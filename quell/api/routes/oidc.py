"""Signing in with an OpenID Connect provider (quell.governance.oidc).

Both routes are public: they are the sign-in. ``GET /api/auth/oidc/{provider}/login`` sends the
browser to the provider (302) and sets a short-lived cookie holding the login's state, so that
only this browser can finish it; ``GET /api/auth/oidc/{provider}/callback`` is where the provider
sends it back, and answers the new session as JSON (the web console comes later). Neither ever
echoes the code or a token of the provider; both answers are ``Cache-Control: no-store``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from quell.api.auth import RuntimeDep

router = APIRouter(prefix="/api/auth/oidc", tags=["users"])

STATE_COOKIE = "quell_oidc_state"
ProviderName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OidcLoginOut(BaseModel):
    """A session opened by signing in at a provider."""

    token: str = Field(description="The session's bearer token (``qs_…``); shown this once.")
    expires_at: datetime = Field(description="When it ends unless used; each use extends it.")
    user: str
    role: str
    provider: str
    redirect_to: str | None = Field(
        description="The path the login asked to go to afterwards (``redirect_to``), if any."
    )


@router.get(
    "/{provider}/login",
    status_code=status.HTTP_302_FOUND,
    response_class=RedirectResponse,
    summary="Sign in with an OIDC provider (redirects there)",
    responses={302: {"description": "To the provider's authorization endpoint."}},
)
async def oidc_login(
    provider: ProviderName,
    runtime: RuntimeDep,
    redirect_to: Annotated[
        str | None,
        Query(max_length=1024, description="A path on this server to go to after signing in."),
    ] = None,
) -> Response:
    """Start the authorization-code flow with PKCE at ``provider``."""
    start = await runtime.oidc.begin(provider, redirect_to)
    response = RedirectResponse(
        start.authorization_url, status_code=status.HTTP_302_FOUND, headers=_NO_STORE
    )
    response.set_cookie(
        STATE_COOKIE,
        start.state,
        max_age=int(runtime.oidc.login_lifetime.total_seconds()),
        path=start.callback_path,
        secure=runtime.oidc.redirect_uri(provider).startswith("https://"),
        httponly=True,
        samesite="lax",  # sent on the provider's redirect back, a top-level GET
    )
    return response


@router.get(
    "/{provider}/callback",
    response_model=OidcLoginOut,
    summary="Where the OIDC provider sends the browser back",
)
async def oidc_callback(
    provider: ProviderName,
    request: Request,
    runtime: RuntimeDep,
    state: Annotated[str | None, Query(max_length=256)] = None,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """Finish the sign-in: a session for the user (401 with a ``reason`` when refused)."""
    client = request.client.host if request.client else None
    result = await runtime.oidc.finish(
        provider,
        state=state,
        code=code,
        error=error,
        browser_state=request.cookies.get(STATE_COOKIE),
        client=client,
    )
    body = OidcLoginOut(
        token=result.token.reveal(),
        expires_at=result.session.expires_at,
        user=result.user.name,
        role=result.user.role,
        provider=result.provider,
        redirect_to=result.redirect_to,
    )
    response = JSONResponse(
        body.model_dump(mode="json"), headers={**_NO_STORE, "Referrer-Policy": "no-referrer"}
    )
    callback_path = urlsplit(runtime.oidc.redirect_uri(provider)).path or "/"
    response.delete_cookie(STATE_COOKIE, path=callback_path, httponly=True, samesite="lax")
    return response
