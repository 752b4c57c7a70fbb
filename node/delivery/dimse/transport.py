"""The requestor side of pynetdicom's transport, as delivery needs it.

* **TCP_NODELAY.** pynetdicom 3.0.4 does not set it on its sockets. With
  Nagle's algorithm a C-STORE's last small PDU waits for the peer's delayed
  ACK. ``shared/stack-notes.md`` measured pynetdicom -> DCMTK/Orthanc on
  loopback at 14-43 instances/s without it and ~145 with it; 70 MR images to a
  discarding DCMTK storescp went from ~70 to ~115 instances/s when this module
  was written (2 shared cores). :class:`NoDelayAE` creates its sockets with it.
* **Why a connect failed.** pynetdicom catches the ``OSError`` of the TCP
  connect and only logs it; :class:`RecordingSocket` keeps it, so the error can
  say "Connection refused" or "No route to host".
* **DICOM TLS.** pynetdicom 3.0.4 wraps the socket in ``AssociationSocket.connect``
  with ``context.wrap_socket`` and then also swallows the handshake's
  ``ssl.SSLError``. :class:`NoDelaySocket` does the same wrap itself, just before,
  into a :class:`RecordingTLSSocket`: the same file descriptor, so TCP_NODELAY
  stays set, and the handshake's error (bad certificate, hostname mismatch, a
  peer without TLS) is kept like a connect error. In TLS 1.3 the peer checks our
  client certificate after our side of the handshake has finished, so its alert
  ("certificate required", "unknown ca") arrives on the first read; that error is
  kept too (:attr:`RecordingTLSSocket.read_error`).
* **What the peer said.** :class:`PeerWatch` keeps an A-ASSOCIATE-RJ or A-ABORT
  PDU as it is decoded.

The socket and AE hooks override pynetdicom's ``_create_socket`` methods, which
are private: pynetdicom is pinned (3.0.4) and the tests check the option and the
TLS wrap on a live association.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ
from pynetdicom.transport import AddressInformation, AssociationSocket


class RecordingSocket(socket.socket):
    """A TCP socket that keeps the error of a failed connect (pynetdicom only logs it)."""

    connect_error: OSError | None = None

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self.connect_error = exc
            raise


class RecordingTLSSocket(RecordingSocket, ssl.SSLSocket):
    """A TLS socket that keeps the error of a failed connect or handshake, and of a read.

    Why the read: pynetdicom logs an ``OSError`` from ``recv`` and treats it as the
    connection closing; the TLS alert in it is the only word on why.
    """

    read_error: ssl.SSLError | None = None

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self.read_error = exc
            raise


class NoDelaySocket(AssociationSocket):
    """pynetdicom's socket wrapper, creating the TCP socket with TCP_NODELAY set.

    Attributes:
        tcp_socket: the socket that connects: a :class:`RecordingSocket`, or after
            :meth:`wrap_tls` the :class:`RecordingTLSSocket` over the same descriptor.
    """

    tcp_socket: RecordingSocket | None = None

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        # Same steps as AssociationSocket._create_socket in pynetdicom 3.0.4 (pinned),
        # plus TCP_NODELAY: every PDU is written whole, so Nagle only adds latency.
        family = socket.AF_INET if address.is_ipv4 else socket.AF_INET6
        sock = RecordingSocket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.assoc.network_timeout is not None:
            sock.settimeout(self.assoc.network_timeout)
        sock.bind(address.as_tuple)
        self.tcp_socket = sock
        return sock

    def wrap_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Wrap the unconnected TCP socket for TLS; the handshake runs on connect.

        Instead of handing ``tls_args`` to pynetdicom, which would wrap it the same
        way inside ``connect`` but into a socket that keeps no error.
        """
        if self.socket is None:
            raise ValueError("wrap_tls needs the socket _create_socket made")
        # Every socket this context wraps records its errors; harmless for any other user.
        context.sslsocket_class = RecordingTLSSocket
        wrapped = context.wrap_socket(self.socket, server_side=False, server_hostname=server_hostname)
        self.socket = self.tcp_socket = cast(RecordingTLSSocket, wrapped)


class NoDelayAE(AE):
    """An AE whose requestor sockets are :class:`NoDelaySocket`; one association each.

    ``associate(..., tls_args=(context, server_hostname))`` gives TLS as in pynetdicom.
    """

    last_socket: NoDelaySocket | None = None

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: tuple[ssl.SSLContext, str] | None,
    ) -> AssociationSocket:
        sock = NoDelaySocket(assoc, address=address)
        if tls_args is not None:
            sock.wrap_tls(*tls_args)  # sock.tls_args stays None: pynetdicom must not wrap again
        self.last_socket = sock
        return sock


class PeerWatch:
    """Keeps the A-ASSOCIATE-RJ or A-ABORT PDU the peer sent, as pynetdicom decoded it.

    Why: pynetdicom's own state can lose them. A DCMTK ``storescp`` that rejects
    and closes at once made pynetdicom report an abort instead of the rejection
    in 8 of 30 tries; the PDU event fired every time.
    """

    def __init__(self) -> None:
        self.rejection: A_ASSOCIATE_RJ | None = None
        self.abort: A_ABORT_RQ | None = None

    def on_pdu(self, event: Event) -> None:
        pdu = getattr(event, "pdu", None)
        if isinstance(pdu, A_ASSOCIATE_RJ):
            self.rejection = pdu
        elif isinstance(pdu, A_ABORT_RQ):
            self.abort = pdu
