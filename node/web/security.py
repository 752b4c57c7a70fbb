"""Who is asking: a session cookie (browsers) or a bearer token (automation); CSRF; roles.

* **Sessions**: Starlette's signed cookie (itsdangerous, HMAC-SHA1 over the JSON) holding
  only the user name, the CSRF token and the sign-in time; ``HttpOnly``, ``SameSite=Lax``,
  ``Secure`` over HTTPS. The user is re-read on every request, so a disabled user or a
  changed role takes effect at once.
* **CSRF**: every state-changing request with a session must carry the session's token,
  as the form field ``csrf`` (pages) or the ``X-CSRF-Token`` header (the pages' scripts);
  a bearer-token request needs none (a browser never sends it by itself).
* **Secret**: 32 random bytes in ``<data_dir>/web-secret`` (mode 0600), made at the first
  start, so sessions survive restarts and several processes sharing a data folder agree.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

from fastapi import HTTPException, Request

from segnode.node.admin.accounts import current_actor, token_actor
from segnode.node.admin.actors import Actor
from segnode.node.web.context import WebContext

SECRET_FILE = "web-secret"
SESSION_COOKIE = "segnode_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


class NotSignedInError(Exception):
    """No valid session or token: the pages redirect to the sign-in page, the API says 401."""


def session_secret(data_dir: Path) -> str:
    """The signing key, made once (atomically, owner-only) and read at every start."""
    path = Path(data_dir) / SECRET_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(temporary, path)  # the first process to get here wins; the rest read its key
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_text().strip()


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def web_context(request: Request) -> WebContext:
    context: WebContext = request.app.state.web
    return context


def start_session(request: Request, actor: Actor) -> None:
    request.session.clear()
    request.session.update(
        {"user": actor.name, CSRF_FIELD: secrets.token_urlsafe(24), "since": int(time.time())}
    )


def csrf_token(request: Request) -> str:
    token = request.session.get(CSRF_FIELD)
    return str(token) if token else ""


async def authenticate(request: Request) -> Actor:
    """The actor of this request, or :class:`NotSignedInError`; checks CSRF for unsafe methods.

    Async only to read a form's ``csrf`` field (Starlette keeps the parsed form, so the
    route reads it again for free); the database work is quick indexed reads.
    """
    context = web_context(request)
    client = client_address(request)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        actor = token_actor(context.sessions, header[7:].strip(), client)
        if actor is None:
            raise HTTPException(401, "invalid or revoked API token", {"WWW-Authenticate": "Bearer"})
        return actor
    username = request.session.get("user")
    if not username:
        raise NotSignedInError
    actor = current_actor(context.sessions, str(username), client)
    if actor is None:
        request.session.clear()
        raise NotSignedInError
    if request.method in _UNSAFE:
        given = request.headers.get(CSRF_HEADER)
        if not given and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            field = (await request.form()).get(CSRF_FIELD)
            given = field if isinstance(field, str) else None
        if not given or not hmac.compare_digest(str(given), csrf_token(request)):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page and try again")
    return actor
