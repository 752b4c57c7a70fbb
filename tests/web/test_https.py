"""The dashboard over HTTPS with a configured certificate (``[web.tls]``), through a real node."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from segnode.node.service import Node
from tests.helpers import free_port
from tests.tls_certs import make_tls_certs


def test_with_a_certificate_the_web_port_speaks_https_only_and_cookies_are_secure(
    start: Callable[..., Node], tmp_path: Path
) -> None:
    certs = make_tls_certs(tmp_path / "pki")
    port = free_port()
    node = start(
        web={
            "enabled": True,
            "port": port,
            "tls": {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)},
        }
    )
    assert node.web is not None and node.web.scheme == "https"
    trusted = ssl.create_default_context(cafile=str(certs.ca_cert))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted) as client:
        assert client.get("/health").json() == {"status": "alive"}
        password = (node.settings.storage.data_dir / "initial-admin-password").read_text().strip()
        signed_in = client.post("/api/session", json={"username": "admin", "password": password})
        assert signed_in.status_code == 200
        cookie = signed_in.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        assert client.get("/api/me").json() == {"username": "admin", "role": "admin"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as plain, pytest.raises(httpx.HTTPError):
        plain.get("/health")  # plain HTTP on the TLS port gets no answer
    with httpx.Client(base_url=f"https://127.0.0.1:{port}") as untrusted, pytest.raises(httpx.ConnectError):
        untrusted.get("/health")  # a certificate not signed by a trusted CA fails the handshake
