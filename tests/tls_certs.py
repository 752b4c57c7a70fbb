"""Throw-away PKI for DICOM TLS tests: a CA, a server and a client certificate (openssl CLI).

Why the CLI and not a Python package: it is what an administrator would use,
DCMTK reads its output as is, and nothing new needs installing. RSA 2048 keys
(what every BCP 195 cipher suite of DCMTK 3.6.7 accepts); the certificates are
valid for two days, enough for any run. Keys are unencrypted: DCMTK is started
with ``-pw`` (empty password) or never asked.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import require_tool

#: What the server certificate names: the loopback address and name the tests connect to.
LOOPBACK_NAMES = ("IP:127.0.0.1", "DNS:localhost")


@dataclass(frozen=True)
class TlsCerts:
    """PEM files in one folder. ``ca_cert`` signed both ``server_cert`` and ``client_cert``."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_certs(
    folder: Path, *, name: str = "segnode test", server_names: Sequence[str] = LOOPBACK_NAMES
) -> TlsCerts:
    """Create a CA and a server and a client certificate it signed, under ``folder``.

    Args:
        folder: created if missing; files are ``ca.pem``/``ca.key``, ``server.pem``/
            ``server.key``, ``client.pem``/``client.key``.
        name: put in every subject's CN, so that two calls (say, a "wrong CA") differ.
        server_names: the server certificate's subjectAltName entries, openssl syntax.

    Raises:
        subprocess.CalledProcessError: openssl failed (its stderr is in the error).
    """
    openssl = require_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    certs = TlsCerts(
        folder=folder,
        ca_cert=folder / "ca.pem",
        ca_key=folder / "ca.key",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    _run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-sha256",
         "-keyout", certs.ca_key, "-out", certs.ca_cert, "-subj", f"/CN={name} CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _issue(openssl, certs, "server", f"/CN={name} server", [
        f"subjectAltName={','.join(server_names)}",
        "extendedKeyUsage=serverAuth",
    ])
    _issue(openssl, certs, "client", f"/CN={name} client", ["extendedKeyUsage=clientAuth"])
    return certs


def _issue(openssl: str, certs: TlsCerts, role: str, subject: str, extensions: list[str]) -> None:
    key, cert = certs.folder / f"{role}.key", certs.folder / f"{role}.pem"
    request, extfile = certs.folder / f"{role}.csr", certs.folder / f"{role}.ext"
    extfile.write_text("\n".join(["basicConstraints=CA:FALSE",
                                  "keyUsage=critical,digitalSignature,keyEncipherment", *extensions]) + "\n")
    _run(openssl, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", subject)
    _run(openssl, "x509", "-req", "-in", request, "-CA", certs.ca_cert, "-CAkey", certs.ca_key,
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", extfile, "-out", cert)


def _run(*args: str | Path) -> None:
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
