"""The ``[web]`` section: the dashboard, the REST API, metrics and health endpoints.

Why a section of its own: the web server is a separate front door with its own address,
certificate and sign-in rules; radiology IT sets it apart from the DICOM listener's.
Defaults keep it on loopback over plain HTTP, which is safe only on the node's machine;
a site that opens it to the network sets ``host`` and a certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from segnode.config.fields import Port, PositiveSeconds, Section


class WebTls(Section):
    """HTTPS for the dashboard and API (uvicorn's TLS, TLS 1.2 or later)."""

    cert_file: Path | None = None
    """PEM certificate chain; set together with ``key_file`` to serve HTTPS only."""
    key_file: Path | None = None

    @model_validator(mode="after")
    def _both_or_none(self) -> WebTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("web.tls: cert_file and key_file go together")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class OidcSettings(Section):
    """Sign-in through the site's OpenID Connect identity provider (authorization code flow)."""

    enabled: bool = False
    issuer: str = ""
    """The provider's issuer URL; its ``/.well-known/openid-configuration`` is read at sign-in."""
    client_id: str = ""
    client_secret: str = ""
    username_claim: str = "preferred_username"
    """The ID token claim that names the user (falls back to ``email``, then ``sub``)."""
    default_role: Literal["viewer", "operator", "admin"] = "viewer"
    """The role of a person signing in for the first time; an admin can change it."""
    button_label: str = "Sign in with the hospital account"

    @model_validator(mode="after")
    def _complete(self) -> OidcSettings:
        if self.enabled and not (self.issuer and self.client_id):
            raise ValueError("web.oidc: enabled needs issuer and client_id")
        return self


class WebSettings(Section):
    """The dashboard and REST API (``segnode serve`` runs them in their own thread)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8080
    tls: WebTls = WebTls()
    session_max_age_s: PositiveSeconds = 8 * 3600.0
    """A signed-in browser session ends this long after sign-in."""
    login_max_failures: Annotated[int, Field(ge=1)] = 5
    """Failed sign-ins allowed per user name, and per client address, within login_window_s."""
    login_window_s: PositiveSeconds = 300.0
    refresh_s: PositiveSeconds = 3.0
    """How often an open page reloads its live parts (jobs, studies, status)."""
    oidc: OidcSettings = OidcSettings()
