"""Signing in and out: the local user form (pages and JSON) and, optionally, OpenID Connect.

A failed sign-in says only "wrong user name or password" (never which), takes as long as a
right one (argon2 against a dummy hash), and counts towards the rate limit; a sign-in
replaces the session (a new CSRF token), so a cookie planted before sign-in is useless.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

from segnode.node.admin.accounts import sign_in
from segnode.node.admin.errors import SignInRefusedError
from segnode.node.web import oidc
from segnode.node.web.context import WebContext
from segnode.node.web.pages import render
from segnode.node.web.security import client_address, start_session, web_context

router = APIRouter(tags=["auth"])
router.include_router(oidc.router)
Ctx = Annotated[WebContext, Depends(web_context)]


class Credentials(BaseModel):
    username: str
    password: str


def _safe_next(target: str | None) -> str:
    """Only a path on this site (``/jobs/3``), never ``//elsewhere`` or a full URL."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


@router.get("/login", include_in_schema=False)
def login_page(request: Request, ctx: Ctx, next: str | None = None) -> Response:
    return render(request, "login.html", {"next": _safe_next(next), "oidc": ctx.settings.web.oidc}, actor=None)


@router.post("/login", include_in_schema=False)
def login_form(
    request: Request,
    ctx: Ctx,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    try:
        actor = sign_in(ctx.sessions, ctx.settings.web, username, password, client_address(request))
    except SignInRefusedError as exc:
        return render(
            request,
            "login.html",
            {"next": _safe_next(next), "error": str(exc), "username": username, "oidc": ctx.settings.web.oidc},
            actor=None,
            status_code=429 if exc.rate_limited else 401,
        )
    start_session(request, actor)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/api/session", tags=["api"])
def api_login(body: Credentials, request: Request, ctx: Ctx) -> dict[str, str]:
    """Sign in for a browser-like client: sets the session cookie; returns the CSRF token
    that its state-changing calls must send as ``X-CSRF-Token``."""
    actor = sign_in(ctx.sessions, ctx.settings.web, body.username, body.password, client_address(request))
    start_session(request, actor)
    return {"username": actor.name, "role": actor.role.value, "csrf_token": request.session["csrf"]}


@router.post("/logout", include_in_schema=False)
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
