"""pynetdicom's transport, guarded: the socket, request handler and server of the listener.

Why: pynetdicom 3.0.4 reads a PDU's declared length whole with a blocking
``recv`` loop (neither ARTIM nor the network timeout is checked), buffers any
length a peer declares, and runs TLS handshakes in the accept loop. Everything
here uses pynetdicom's own extension points (``make_server``'s
``server_class``, the server's ``request_handler``), so no pynetdicom code is
patched; the admission policy is :mod:`segnode.node.receiving.connection_guard`.

- :class:`GuardedAssociationSocket` replaces pynetdicom's socket wrapper. The
  DUL reads every PDU as ``recv(6)`` (header) then ``recv(length)`` (body), so
  the wrapper sees each header before the body is read and can refuse an
  unknown type or an oversized length without buffering it, read each PDU
  under a deadline from its first byte, and count the dataset bytes of a
  C-STORE as they arrive.
- :class:`GuardedAssociationServer` admits connections through the guard,
  runs the sweeper in its service loop, and wraps TLS sockets without a
  handshake; :class:`GuardedRequestHandler` completes the handshake in the
  connection's own thread, under the association deadline, then reads the
  whole A-ASSOCIATE-RQ itself before pynetdicom starts its (polling) threads.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE, A_P_ABORT
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from segnode.node.receiving.connection_guard import (
    ConnectionGuard,
    ConnectionState,
    GuardedConnection,
)

log = logging.getLogger(__name__)

#: Largest non-P-DATA PDU accepted. An A-ASSOCIATE-RQ proposing 128 presentation
#: contexts with a dozen transfer syntaxes each is about 100 KiB.
MAX_CONTROL_PDU_BYTES = 256 * 1024
_PDU_TYPES = range(0x01, 0x08)
_P_DATA_TF = 0x04
_HEADER_BYTES = 6
_READ_CHUNK_BYTES = 1 << 20



def read_before(
    sock: socket.socket,
    nr_bytes: int,
    deadline: Callable[[], tuple[float, str]],
    on_deadline: Callable[[str], None],
) -> bytearray:
    """Read ``nr_bytes`` (fewer when the peer closes or the deadline passes).

    ``deadline()`` is asked before every chunk, so a connection accepted as an
    association mid-read switches from the request deadline to the PDU's. On
    expiry ``on_deadline(why)`` is called once and the short read returned.
    Large ``recv_into`` chunks into one buffer (pynetdicom reads 4 KiB at a
    time); ``nr_bytes`` must already be checked against the limits.
    """
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    received = 0
    try:
        while received < nr_bytes:
            until, why = deadline()
            remaining = until - time.monotonic()
            if remaining <= 0:
                on_deadline(why)
                break
            sock.settimeout(remaining)
            try:
                count = sock.recv_into(view[received:], min(nr_bytes - received, _READ_CHUNK_BYTES))
            except TimeoutError:
                continue  # the check above reports it
            if count == 0:
                break
            received += count
        sock.settimeout(None)
    except OSError:
        pass  # reset or shut: a short read, which the DUL treats as closed
    finally:
        view.release()
    del buffer[received:]
    return buffer


def connection_of(assoc: Association) -> GuardedConnection | None:
    """The guard's booking of an association made by :class:`GuardedRequestHandler`."""
    sock = assoc.dul.socket
    return sock.connection if isinstance(sock, GuardedAssociationSocket) else None


def _abort_pdu(source: int, reason: int) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8): type 07, length 4, source, reason/diagnostic."""
    return b"\x07\x00\x00\x00\x00\x04\x00\x00" + bytes([source, reason])


class GuardedAssociationSocket(AssociationSocket):
    """pynetdicom's socket wrapper with bounded, deadline-limited PDU reads.

    Why at this level: the DUL's only reads are ``recv(6)`` for a PDU header
    and ``recv(length)`` for its body, so here each header can be judged before
    any body byte is buffered. Refusing is done by returning a short read, which
    the DUL already handles as "transport closed" (Evt17), after sending an
    A-ABORT and shutting the socket. The first PDU, the A-ASSOCIATE-RQ, was
    already read by :class:`GuardedRequestHandler` and is served from memory.
    """

    def __init__(
        self,
        assoc: Association,
        client_socket: socket.socket,
        connection: GuardedConnection,
        guard: ConnectionGuard,
        first_pdu: bytes = b"",
    ) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.connection = connection
        self._guard = guard
        self._prebuffer = bytearray(first_pdu)
        self._expect_header = True
        self._pdu_type = 0
        self._pdu_deadline = 0.0
        self._dataset_bytes = 0

    @property
    def ready(self) -> bool:
        """Data to read: the A-ASSOCIATE-RQ read ahead by the handler, or the socket's."""
        return bool(self._prebuffer) or bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        if self._expect_header:
            # The DUL calls recv only once select() reported data: the PDU's
            # first byte is here, so its deadline starts now.
            self._pdu_deadline = time.monotonic() + self._guard.limits.pdu_read_timeout_s
            header = self._read(nr_bytes)
            if nr_bytes != _HEADER_BYTES or len(header) < nr_bytes:
                return header
            self._pdu_type = header[0]
            refusal = self._header_refusal(header[0], int.from_bytes(header[2:6], "big"))
            if refusal is not None:
                reason, source, diagnostic = refusal
                return self._refuse(reason, source, diagnostic)
            self._expect_header = False
            return header
        self._expect_header = True
        body = self._read(nr_bytes)
        if self._pdu_type == _P_DATA_TF and len(body) == nr_bytes and not self._count_dataset(body):
            return self._refuse("C-STORE dataset larger than max_instance_mb", 0x00, 0x00)
        return body

    def _header_refusal(self, pdu_type: int, length: int) -> tuple[str, int, int] | None:
        """Why a PDU must not be read, with the A-ABORT source and reason; None to read it."""
        limits = self._guard.limits
        if pdu_type not in _PDU_TYPES:
            return "unknown PDU type", 0x02, 0x01  # service provider: unrecognized PDU
        if pdu_type == _P_DATA_TF and length > limits.max_pdata_pdu_bytes:
            return "P-DATA-TF PDU longer than the negotiated maximum", 0x02, 0x06
        if pdu_type != _P_DATA_TF and length > MAX_CONTROL_PDU_BYTES:
            return "control PDU longer than 256 KiB", 0x02, 0x06
        return None

    def _count_dataset(self, body: bytearray) -> bool:
        """Add the dataset PDVs of one P-DATA-TF body; False once over the instance cap."""
        offset = 0
        while offset + 6 <= len(body):
            item_length = int.from_bytes(body[offset : offset + 4], "big")
            control = body[offset + 5]  # bit 0: command, bit 1: last fragment
            if not control & 0x01:
                self._dataset_bytes += max(item_length - 2, 0)
                if self._dataset_bytes > self._guard.limits.max_instance_bytes:
                    return False
                if control & 0x02:
                    self._dataset_bytes = 0
            offset += 4 + item_length
        return True

    def _deadline(self) -> tuple[float, str]:
        connection = self.connection
        if connection.state is ConnectionState.PENDING and connection.deadline < self._pdu_deadline:
            return connection.deadline, "association request timeout"
        return self._pdu_deadline, "PDU read timeout"

    def _read(self, nr_bytes: int) -> bytearray:
        if self._prebuffer:
            data = self._prebuffer[:nr_bytes]
            del self._prebuffer[:nr_bytes]
            if len(data) == nr_bytes or self.socket is None:
                return data
            return data + self._read(nr_bytes - len(data))
        if self.socket is None:
            return bytearray()
        return read_before(self.socket, nr_bytes, self._deadline, self._on_deadline)

    def _on_deadline(self, why: str) -> None:
        self._guard.drop(self.connection, why)

    def _refuse(self, reason: str, source: int, diagnostic: int) -> bytearray:
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(0.2)  # never wait on a peer that does not read
                sock.sendall(_abort_pdu(source, diagnostic))
            except OSError:
                pass
        self._guard.drop(self.connection, reason)
        return bytearray()


class GuardedRequestHandler(RequestHandler):
    """Runs one connection: TLS handshake, association, bookkeeping to the end.

    The A-ASSOCIATE-RQ is read here, in a thread blocked in ``recv`` under the
    request deadline, before pynetdicom is involved: each pynetdicom association
    costs two threads polling every millisecond, so sixteen idle or half-sent
    connections would otherwise slow every legitimate one (GIL contention).
    The thread stays until the association thread ends (``join``), so the
    guard's booking is released on every path, including those where
    pynetdicom fires no ``EVT_CONN_CLOSE``.
    """

    server: GuardedAssociationServer

    def handle(self) -> None:
        guard = self.server.guard
        sock = cast(socket.socket, self.request)
        connection = guard.connection_for(sock)
        try:
            if connection is None:
                return  # evicted before its thread started
            if isinstance(sock, ssl.SSLSocket) and not self._handshake(sock, connection):
                return
            request = self._read_association_request(sock, connection)
            if not request:
                return
            assoc = self._create_association(connection, request)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            if connection is not None:
                connection.shut()
                guard.release(connection)
            sock.close()

    def _handshake(self, sock: ssl.SSLSocket, connection: GuardedConnection) -> bool:
        """Complete the TLS handshake here, not in the accept loop, within the deadline."""
        connection.handshaking = True
        try:
            sock.settimeout(max(connection.deadline - time.monotonic(), 0.001))
            sock.do_handshake()
            sock.settimeout(None)
            return True
        except (OSError, ValueError) as exc:
            if connection.state is not ConnectionState.CLOSED:  # not evicted or swept
                reason = "timeout" if isinstance(exc, TimeoutError) else getattr(exc, "reason", None)
                self.server.guard.report(
                    connection,
                    f"TLS handshake failed: {reason or type(exc).__name__}",
                    event="tls_handshake_failed",
                )
            return False
        finally:
            connection.handshaking = False

    def _read_association_request(
        self, sock: socket.socket, connection: GuardedConnection
    ) -> bytes | None:
        """The whole first PDU if it is an acceptable A-ASSOCIATE-RQ, else None (dropped)."""
        guard = self.server.guard
        limits = guard.limits

        def request_deadline() -> tuple[float, str]:
            return connection.deadline, "association request timeout"

        def drop(why: str) -> None:
            guard.drop(connection, why)

        first = read_before(sock, 1, request_deadline, drop)
        if not first:
            return None
        pdu_deadline = time.monotonic() + limits.pdu_read_timeout_s

        def deadline() -> tuple[float, str]:
            if pdu_deadline < connection.deadline:
                return pdu_deadline, "PDU read timeout"
            return request_deadline()

        header = first + read_before(sock, _HEADER_BYTES - 1, deadline, drop)
        if len(header) < _HEADER_BYTES:
            return None
        length = int.from_bytes(header[2:6], "big")
        if header[0] not in _PDU_TYPES:
            refusal = "unknown PDU type", 0x01
        elif header[0] != 0x01:
            refusal = "first PDU is not an A-ASSOCIATE-RQ", 0x02
        elif length > MAX_CONTROL_PDU_BYTES:
            refusal = "control PDU longer than 256 KiB", 0x06
        else:
            refusal = None
        if refusal is not None:
            self._refuse(sock, connection, *refusal)
            return None
        body = read_before(sock, length, deadline, drop)
        return bytes(header + body) if len(body) == length else None

    def _refuse(
        self, sock: socket.socket, connection: GuardedConnection, reason: str, diagnostic: int
    ) -> None:
        """A-ABORT (service provider, ``diagnostic``) and drop; best effort, never waits."""
        try:
            sock.settimeout(0.2)
            sock.sendall(_abort_pdu(0x02, diagnostic))
        except OSError:
            pass
        self.server.guard.drop(connection, reason)

    def _create_association(
        self, connection: GuardedConnection | None = None, request: bytes = b""
    ) -> Association:
        """pynetdicom 3.0.4's ``RequestHandler._create_association``, with our socket.

        Copied rather than called because the base builds its
        ``AssociationSocket`` inline (and that constructor queues the
        connection event, so the socket cannot be swapped afterwards).
        """
        if connection is None:
            raise ConnectionError("a guarded association needs its connection")
        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(
            GuardedAssociationSocket(assoc, self.request, connection, self.server.guard, request)
        )
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Callable[..., Any], Any]], handlers):
                    assoc.bind(event, handler, args)
        return assoc


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with admission control and deferred TLS."""

    # A flood fills a 5-deep backlog at once; the kernel then drops a legitimate
    # SYN and the sender waits a full second for its retransmission.
    request_queue_size = 128
    # Connection threads are bounded by the guard and waited for in shutdown().
    daemon_threads = True
    #: How often (seconds) the accept loop wakes to sweep expired connections.
    SWEEP_INTERVAL_S = 0.2

    def __init__(
        self,
        ae: ApplicationEntity,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[PresentationContext],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[evt.EventHandlerType] | None = None,
        *,
        guard: ConnectionGuard,
        reuse_port: bool = False,
    ) -> None:
        self.guard = guard
        self.reuse_port = reuse_port
        # Ours first, so the listener's own handlers see the guard's decision.
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, self._on_connection_close),
            *(evt_handlers or []),
        ]
        super().__init__(
            ae, address, ae_title, contexts, ssl_context, handlers,
            request_handler=GuardedRequestHandler,
        )

    def server_bind(self) -> None:
        """Bind; with ``reuse_port`` several listener processes share the port (``SO_REUSEPORT``:
        the kernel spreads incoming connections over their sockets)."""
        if self.reuse_port:
            cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def serve(self) -> None:
        """The accept loop (run it in a thread); wakes often enough to sweep."""
        self.serve_forever(poll_interval=self.SWEEP_INTERVAL_S)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, and wrap TLS without handshaking: a silent client must not stall accepting."""
        listening = cast(socket.socket, self.socket)
        client, address = listening.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address, port = client_address[0], client_address[1]
        return self.guard.admit(request, str(address), int(port)) is not None

    def service_actions(self) -> None:
        super().service_actions()
        self.guard.sweep()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection handler failed", extra={"peer_address": client_address[0]})

    def shutdown(self) -> None:
        """Stop accepting, then close every guarded connection and wait for its thread."""
        super().shutdown()
        self.guard.close_all()
        if not self.guard.wait_closed(timeout_s=10.0):
            log.warning("connections still closing at shutdown", extra=_counts(self.guard))

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        if not isinstance(assoc.requestor.primitive, A_ASSOCIATE):
            # Our wake-up from _on_connection_close: the peer is gone.
            assoc.is_aborted = True
            assoc.kill()
            return
        connection = connection_of(assoc)
        if connection is not None:
            connection.requested = True

    def _on_connection_close(self, event: Event) -> None:
        # Closed before the A-ASSOCIATE-RQ reached the association thread, which
        # would otherwise sit in receive_pdu() for acse_timeout as a live
        # "association". A provider abort wakes it (see _on_requested).
        connection = connection_of(event.assoc)
        if connection is not None and not connection.requested:
            wake = A_P_ABORT()
            wake.provider_reason = 0x00
            event.assoc.dul.to_user_queue.put(wake)


def _counts(guard: ConnectionGuard) -> dict[str, int]:
    return {f"{state.value}_connections": count for state, count in guard.counts().items()}
