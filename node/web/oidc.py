"""OpenID Connect sign-in (authorization code flow with PKCE) through the site's provider.

Authlib does the protocol: discovery (``<issuer>/.well-known/openid-configuration``), the
state and nonce kept in the signed session, PKCE (S256), the code exchange, and the ID
token's checks (signature against the provider's JWKS, issuer, audience, expiry, nonce).
segnode then maps the token's ``sub`` to a user (``accounts.sign_in_oidc``: created at the
first sign-in with ``[web.oidc] default_role``) and starts an ordinary session. Every
refusal (the provider's error, a failed exchange, a bad token, a disabled user) shows the
sign-in page with what went wrong; none is a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from httpx import HTTPError

from segnode.config.web import OidcSettings
from segnode.node.admin.accounts import sign_in_oidc
from segnode.node.admin.errors import NotFoundError, SignInRefusedError
from segnode.node.web.pages import render
from segnode.node.web.security import client_address, start_session, web_context
from segnode.storage.models import UserRole

log = logging.getLogger(__name__)
router = APIRouter(prefix="/auth/oidc", include_in_schema=False)
_NEXT = "oidc_next"


def _client(request: Request) -> tuple[Any, OidcSettings]:
    """The provider's client, registered once per application from ``[web.oidc]``."""
    settings = web_context(request).settings.web.oidc
    if not settings.enabled:
        raise NotFoundError("OpenID Connect sign-in is not configured ([web.oidc] enabled = false)")
    registry = getattr(request.app.state, "oidc", None)
    if registry is None:
        # Imported on first use: a node without OIDC never loads Authlib.
        from authlib.integrations.starlette_client import OAuth

        registry = OAuth()
        registry.register(
            "provider",
            client_id=settings.client_id,
            client_secret=settings.client_secret or None,
            server_metadata_url=settings.issuer.rstrip("/") + "/.well-known/openid-configuration",
            client_kwargs={"scope": "openid profile email", "code_challenge_method": "S256"},
        )
        request.app.state.oidc = registry
    return registry.provider, settings


def _oauth_error() -> type[Exception]:
    from authlib.integrations.base_client.errors import OAuthError

    error: type[Exception] = OAuthError
    return error


def _refused(request: Request, message: str) -> Response:
    settings = web_context(request).settings.web.oidc
    return render(
        request, "login.html", {"next": "/", "error": message, "oidc": settings}, actor=None, status_code=401
    )


@router.get("/login")
async def oidc_login(request: Request, next: str = "/") -> Response:
    provider, _ = _client(request)
    request.session[_NEXT] = next if next.startswith("/") and not next.startswith("//") else "/"
    try:
        response: Response = await provider.authorize_redirect(request, str(request.url_for("oidc_callback")))
    except (_oauth_error(), HTTPError, ValueError) as exc:
        log.warning("oidc: provider unreachable", extra={"error": type(exc).__name__})
        return _refused(request, f"the identity provider cannot be reached: {type(exc).__name__}")
    return response


@router.get("/callback", name="oidc_callback")
async def oidc_callback(request: Request) -> Response:
    provider, settings = _client(request)
    if "error" in request.query_params:
        reason = request.query_params.get("error_description") or request.query_params["error"]
        return _refused(request, f"the identity provider refused the sign-in: {reason}")
    try:
        token = await provider.authorize_access_token(request)
    except (_oauth_error(), HTTPError, ValueError, KeyError) as exc:
        log.warning("oidc: sign-in failed", extra={"error": type(exc).__name__})
        return _refused(request, f"the sign-in could not be completed ({type(exc).__name__}); try again")
    claims = token.get("userinfo") or {}
    subject = claims.get("sub")
    if not subject:
        return _refused(request, "the identity provider's answer names no user (no 'sub' claim)")
    username = str(claims.get(settings.username_claim) or claims.get("email") or subject)
    next_path = request.session.pop(_NEXT, "/")
    try:
        actor = sign_in_oidc(
            web_context(request).sessions, str(subject), username, UserRole(settings.default_role),
            client_address(request),
        )
    except SignInRefusedError as exc:
        return _refused(request, str(exc))
    start_session(request, actor)
    return RedirectResponse(next_path, status_code=303)
