"""OpenID Connect sign-in against a real provider: ``oidc-provider-mock`` on loopback.

The provider is a real OIDC implementation (Authlib's server, in Flask) with its own keys,
discovery, authorization form and token endpoint; the node's web server is served for real
by uvicorn. The browser's part (follow the redirects, submit the provider's form) is done
with httpx.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import oidc_provider_mock
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import load_settings
from segnode.node.service import open_storage
from segnode.node.web.server import WebServer
from segnode.storage.models import AuditEvent, User
from tests.helpers import free_port


@dataclass
class Site:
    base: str
    issuer: str
    sessions: sessionmaker[Session]


def _site(tmp_path: Path, issuer: str, client_id: str, secret: str, port: int) -> tuple[WebServer, Site]:
    settings = load_settings(None, {
        "storage": {"data_dir": str(tmp_path / "data")},
        "web": {"enabled": True, "port": port, "oidc": {
            "enabled": True, "issuer": issuer, "client_id": client_id, "client_secret": secret,
            "default_role": "operator",
        }},
    })
    _, sessions, _ = open_storage(settings)
    server = WebServer(settings, sessions, None)
    server.start()
    return server, Site(f"http://127.0.0.1:{port}", issuer, sessions)


@pytest.fixture
def provider() -> Iterator[str]:
    users = [oidc_provider_mock.User(sub="u-1001", claims={"preferred_username": "dr.hale", "email": "hale@h.example"})]
    with oidc_provider_mock.run_server_in_thread(require_client_registration=True, require_nonce=True,
                                                 user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


def _register(issuer: str, redirect_uri: str) -> tuple[str, str]:
    answer = httpx.post(f"{issuer}/oauth2/clients", json={"redirect_uris": [redirect_uri]})
    answer.raise_for_status()
    return answer.json()["client_id"], answer.json()["client_secret"]


def _sign_in(site: Site, sub: str = "u-1001") -> tuple[httpx.Client, httpx.Response]:
    """A browser's round trip: node → provider's form → submit as ``sub`` → node's callback."""
    browser = httpx.Client(base_url=site.base, follow_redirects=False)
    to_provider = browser.get("/auth/oidc/login?next=/jobs")
    assert to_provider.status_code in (302, 303, 307), to_provider.text
    authorize = to_provider.headers["location"]
    assert authorize.startswith(site.issuer) and "code_challenge=" in authorize and "nonce=" in authorize
    back = httpx.post(authorize, data={"sub": sub, "action": "authorize"}, follow_redirects=False)
    assert back.status_code in (302, 303), back.text
    callback = back.headers["location"]
    assert callback.startswith(f"{site.base}/auth/oidc/callback")
    return browser, browser.get(callback.removeprefix(site.base))


def test_a_first_sign_in_creates_the_user_and_a_second_reuses_it(tmp_path: Path, provider: str) -> None:
    port = free_port()
    client_id, secret = _register(provider, f"http://127.0.0.1:{port}/auth/oidc/callback")
    server, site = _site(tmp_path, provider, client_id, secret, port)
    try:
        browser, landed = _sign_in(site)
        assert landed.status_code == 303 and landed.headers["location"] == "/jobs"
        assert browser.get("/api/me").json() == {"username": "dr.hale", "role": "operator"}
        with site.sessions() as session:
            user = session.execute(select(User)).scalar_one()
            logins = session.execute(select(AuditEvent).where(AuditEvent.action == "login")).scalars().all()
        assert (user.username, user.oidc_subject, user.password_hash) == ("dr.hale", "u-1001", None)
        assert [(e.actor, e.ok, e.detail["method"]) for e in logins] == [("dr.hale", True, "oidc")]

        assert _sign_in(site)[0].get("/api/me").status_code == 200
        with site.sessions.begin() as session:
            assert len(session.execute(select(User)).scalars().all()) == 1
            session.execute(update(User).values(disabled=True))
        refused, page = _sign_in(site)
        assert page.status_code == 401 and "disabled" in page.text
        assert refused.get("/api/me").status_code == 401
        with site.sessions() as session:
            last = session.execute(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
        assert (last.action, last.ok) == ("login", False)
    finally:
        server.stop()


def test_a_wrong_client_secret_or_a_forged_callback_is_refused_without_a_session(
    tmp_path: Path, provider: str
) -> None:
    port = free_port()
    client_id, _ = _register(provider, f"http://127.0.0.1:{port}/auth/oidc/callback")
    server, site = _site(tmp_path, provider, client_id, "not-the-secret", port)
    try:
        browser, page = _sign_in(site)
        assert page.status_code == 401 and "could not be completed" in page.text
        assert browser.get("/api/me").status_code == 401
        forged = httpx.get(f"{site.base}/auth/oidc/callback?code=abc&state=forged")
        assert forged.status_code == 401 and "could not be completed" in forged.text
        denied = httpx.get(f"{site.base}/auth/oidc/callback?error=access_denied&error_description=nope")
        assert denied.status_code == 401 and "refused the sign-in: nope" in denied.text
        with site.sessions() as session:
            assert session.execute(select(User)).first() is None
    finally:
        server.stop()


def test_without_oidc_configured_its_routes_do_not_exist(tmp_path: Path) -> None:
    settings = load_settings(None, {"storage": {"data_dir": str(tmp_path / "data")},
                                    "web": {"enabled": True, "port": free_port()}})
    _, sessions, _ = open_storage(settings)
    server = WebServer(settings, sessions, None)
    server.start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{settings.web.port}/auth/oidc/login")
        assert answer.status_code == 404 and "not configured" in answer.text
        assert "hospital account" not in httpx.get(f"http://127.0.0.1:{settings.web.port}/login").text
    finally:
        server.stop()
