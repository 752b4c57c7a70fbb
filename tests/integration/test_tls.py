"""DICOM TLS both ways, against DCMTK 3.6.7: the node as sender and as listener.

* **Destinations.** DCMTK ``storescp +tls`` is the PACS; the node's sender
  delivers the SEG and SR (and a real MR image) over TLS, and every way the
  handshake can fail must end in a named delivery error, not a bare abort.
* **Listener.** DCMTK ``storescu +tls`` / ``echoscu +tls`` send real scanner
  files to an in-process node with ``listener.tls`` on.

The certificates are made per module by :mod:`tests.tls_certs`: one PKI that
the peers trust, and a second ("other") standing in for a wrong CA.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from segnode.config.destinations import DimseDestination
from segnode.node.delivery.dimse.contexts import read_headers
from segnode.node.delivery.dimse.scu import open_association
from segnode.node.delivery.dispatch import (
    PermanentDeliveryError,
    TransientDeliveryError,
    send_files,
)
from segnode.node.service import Node
from tests.dcmtk_peers import Storescp
from tests.helpers import dcmtk_env, require_shared_data, require_tool, storescu
from tests.integration.dicom_files import dataset_bytes, index_folder
from tests.integration.test_dcmtk_peers import stored_rows
from tests.integration.test_delivery_peers import results  # noqa: F401  (the SEG + SR fixture)
from tests.tls_certs import TlsCerts, make_tls_certs

pytestmark = pytest.mark.dcmtk

MR_FOLDER = "siemens_prisma_E11_t1_fl2d_sag_HFS"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    return make_tls_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """A CA nobody here trusts, with its own server and client certificates."""
    return make_tls_certs(tmp_path_factory.mktemp("other_pki"), name="other")


def _mr_files(count: int) -> list[Path]:
    return sorted((require_shared_data() / MR_FOLDER).iterdir())[:count]


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --- the node sends: destination.tls ---------------------------------------------------


def _tls_storescp_options(pki: TlsCerts, peer_auth: str) -> tuple[str, ...]:
    """storescp serving TLS with the PKI's server certificate.

    ``peer_auth``: ``-ic`` ignore client certificates, ``-rc`` require one that
    chains to ``+cf`` (DCMTK's default), ``-vc`` verify one when offered.
    """
    return ("+tls", str(pki.server_key), str(pki.server_cert), "-pw", "+cf", str(pki.ca_cert), peer_auth)


def _tls(peer: Storescp, **tls: Any) -> DimseDestination:
    host = tls.pop("host", "127.0.0.1")
    return peer.destination(host=host, tls={"enabled": True, **tls})


def test_seg_sr_and_mr_reach_a_tls_storescp_unchanged(
    storescp: Callable[..., Storescp], pki: TlsCerts, results: list[Path]  # noqa: F811
) -> None:
    peer = storescp("+B", "+xa", *_tls_storescp_options(pki, "-ic"))  # +B: the bytes as received
    files = [*results, *_mr_files(2)]
    destination = _tls(peer, ca_file=pki.ca_cert)
    receipt = send_files(destination, files)
    assert set(receipt.statuses.values()) == {0x0000}
    received = peer.received()
    assert set(received) == set(receipt.sop_instance_uids) == {_sop_uid(path) for path in files}
    for path in files:
        assert dataset_bytes(received[_sop_uid(path)]) == dataset_bytes(path.read_bytes()), path.name
    seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(received[_sop_uid(results[0])]))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentSequence[0].SegmentLabel == "box"

    # The association really is TLS, and TCP_NODELAY survived the wrap (same descriptor).
    assoc, _ = open_association(destination, read_headers(destination.name, files[:1]))
    try:
        assert assoc.dul.socket is not None
        wrapped = assoc.dul.socket.socket
        assert isinstance(wrapped, ssl.SSLSocket)
        assert wrapped.version() in {"TLSv1.2", "TLSv1.3"}
        assert wrapped.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_destination_certificate_from_another_ca_is_a_clear_permanent_error(
    storescp: Callable[..., Storescp], pki: TlsCerts, other_pki: TlsCerts
) -> None:
    peer = storescp(*_tls_storescp_options(pki, "-ic"))
    with pytest.raises(PermanentDeliveryError) as caught:
        send_files(_tls(peer, ca_file=other_pki.ca_cert), _mr_files(1))
    assert caught.value.cause == "tls-failed"
    message = str(caught.value)
    assert "TLS handshake with DCMTK@127.0.0.1" in message
    assert "certificate was not accepted" in message and "tls.ca_file" in message
    assert peer.received() == {}


def test_hostname_mismatch_fails_unless_check_hostname_is_off(
    storescp: Callable[..., Storescp], pki: TlsCerts
) -> None:
    """The certificate names 127.0.0.1 and localhost; 127.0.0.2 reaches the same storescp."""
    peer = storescp(*_tls_storescp_options(pki, "-ic"))
    with pytest.raises(PermanentDeliveryError, match="mismatch, certificate is not valid for '127.0.0.2'") as caught:
        send_files(_tls(peer, ca_file=pki.ca_cert, host="127.0.0.2"), _mr_files(1))
    assert caught.value.cause == "tls-failed" and "check_hostname" in str(caught.value)
    assert peer.received() == {}

    # The chain is still checked without the name: only the right CA delivers.
    send_files(_tls(peer, ca_file=pki.ca_cert, host="127.0.0.2", check_hostname=False), _mr_files(1))
    assert set(peer.received()) == {_sop_uid(_mr_files(1)[0])}
    send_files(_tls(peer, ca_file=pki.ca_cert, host="localhost"), _mr_files(2))
    assert len(peer.received()) == 2


def test_destination_requiring_a_client_certificate(
    storescp: Callable[..., Storescp], pki: TlsCerts, other_pki: TlsCerts
) -> None:
    peer = storescp(*_tls_storescp_options(pki, "-rc"))
    files = _mr_files(3)

    with pytest.raises(PermanentDeliveryError, match="wants a client certificate") as caught:
        send_files(_tls(peer, ca_file=pki.ca_cert), files)
    assert caught.value.cause == "tls-failed"
    with pytest.raises(PermanentDeliveryError, match="signed our client certificate") as caught:
        send_files(_tls(peer, ca_file=pki.ca_cert, cert_file=other_pki.client_cert,
                        key_file=other_pki.client_key), files)
    assert caught.value.cause == "tls-failed"
    assert peer.received() == {}

    receipt = send_files(_tls(peer, ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key), files)
    assert set(peer.received()) == set(receipt.sop_instance_uids) == {_sop_uid(path) for path in files}


def test_tls_to_a_plain_peer_says_so_and_unloadable_files_are_permanent(
    storescp: Callable[..., Storescp], pki: TlsCerts, tmp_path: Path
) -> None:
    plain = storescp()
    with pytest.raises(TransientDeliveryError, match="speaks TLS on this port") as caught:
        send_files(_tls(plain, ca_file=pki.ca_cert), _mr_files(1))
    assert caught.value.cause == "tls-failed"

    with pytest.raises(PermanentDeliveryError, match="cannot load the TLS certificates") as unloadable:
        send_files(_tls(plain, ca_file=tmp_path / "missing.pem"), _mr_files(1))
    assert unloadable.value.cause == "tls-config"
    assert plain.received() == {}


# --- the node receives: listener.tls ---------------------------------------------------

#: What DCMTK 3.6.7 clients print when the TLS listener drops them during the handshake.
REFUSED = "Association Request Failed"


def _listener_tls(pki: TlsCerts, **changes: Any) -> dict[str, Any]:
    return {"tls": {"enabled": True, "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                    "ca_file": str(pki.ca_cert), **changes}}


def _tls_client(pki: TlsCerts, *, client: TlsCerts | None = None) -> tuple[str, ...]:
    """DCMTK client options: trust ``pki``'s CA; present ``client``'s certificate, or none (+tla)."""
    if client is None:
        return ("+tla", "+cf", str(pki.ca_cert))
    return ("+tls", str(client.client_key), str(client.client_cert), "-pw", "+cf", str(pki.ca_cert))


def _echo(node: Node, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), "-aec", "SEGNODE", "-to", "10", "-ta", "10", *options,
         "127.0.0.1", str(node.scp.port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=60,
    )


def test_tls_listener_stores_a_real_series_and_refuses_plain_tcp(
    start: Callable[..., Node], pki: TlsCerts
) -> None:
    folder = require_shared_data() / MR_FOLDER
    files = sorted(folder.iterdir())
    node = start(listener=_listener_tls(pki))

    plain = storescu(node.scp.port, files[:2])
    assert plain.returncode != 0 and REFUSED in plain.stderr, plain.stderr
    assert stored_rows(node) == {}

    sent = storescu(node.scp.port, files, extra=_tls_client(pki, client=pki))
    assert sent.returncode == 0, sent.stderr
    rows = stored_rows(node)
    sources = index_folder(folder)
    assert set(rows) == set(sources) and len(rows) == 35
    for sop_uid, source in sources.items():
        row, series_uid, study_uid = rows[sop_uid]
        assert (series_uid, study_uid) == (source.series_instance_uid, source.study_instance_uid)
        assert pydicom.dcmread(node.store.absolute(row.file_path)) == pydicom.dcmread(source.path)

    # A client without a certificate is fine when none is required (ca_file only: verified if offered).
    echo = _echo(node, *_tls_client(pki))
    assert echo.returncode == 0, echo.stderr
    plain_echo = _echo(node)
    assert plain_echo.returncode != 0 and REFUSED in plain_echo.stderr, plain_echo.stderr


def test_tls_listener_requiring_client_certificates(
    start: Callable[..., Node], pki: TlsCerts, other_pki: TlsCerts
) -> None:
    files = _mr_files(3)
    node = start(listener=_listener_tls(pki, require_client_cert=True))

    anonymous = storescu(node.scp.port, files, extra=_tls_client(pki))
    assert anonymous.returncode != 0 and REFUSED in anonymous.stderr, anonymous.stderr
    stranger = storescu(node.scp.port, files, extra=_tls_client(pki, client=other_pki))
    assert stranger.returncode != 0 and REFUSED in stranger.stderr, stranger.stderr
    assert stored_rows(node) == {}

    known = storescu(node.scp.port, files, extra=_tls_client(pki, client=pki))
    assert known.returncode == 0, known.stderr
    assert set(stored_rows(node)) == {_sop_uid(path) for path in files}
    echo = _echo(node, *_tls_client(pki, client=pki))
    assert echo.returncode == 0, echo.stderr
