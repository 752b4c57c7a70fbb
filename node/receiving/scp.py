"""The DICOM listener: pynetdicom Storage and Verification SCP.

Why the checks live in an ``EVT_REQUESTED`` handler rather than in pynetdicom's
``require_called_aet``: the node answers to several AE titles (``SEGNODE`` and
``SEGNODE_PUSH`` on the same port), pynetdicom compares against one, and the
calling-AE allow-list also checks the peer's address. Rejections are sent with
the standard reasons and recorded. Everything heavier than writing the
instance happens elsewhere: the peer waits for our C-STORE response.

The transport is guarded (node/receiving/connection_guard.py): connections are capped per
address and while pending, must complete their request in time, and PDUs are
read under deadlines and size limits. ``max_associations`` counts accepted
associations only, checked here after the AE titles, with the transient
"local limit exceeded" rejection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom import sop_class as pynetdicom_sop_classes
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import ListenerSettings, Peer
from segnode.node.logs import log_context
from segnode.node.receiving.connection_guard import (
    ConnectionGuard,
    GuardLimits,
    pynetdicom_association_limit,
)
from segnode.node.receiving.file_meta import part10_bytes
from segnode.node.receiving.guarded_transport import GuardedAssociationServer, connection_of
from segnode.node.receiving.header import STATUS_SOP_CLASS_NOT_SUPPORTED, quoted_uid
from segnode.node.receiving.negotiation import contexts_preferring_sender
from segnode.node.receiving.receiver import STATUS_PROCESSING_FAILURE, InstanceReceiver, Sender
from segnode.node.tls import listener_ssl_context
from segnode.storage.associations import close_association, record_association_opened
from segnode.storage.events import record_node_event
from segnode.storage.models import AssociationOutcome

log = logging.getLogger(__name__)

# Every transfer syntax a PACS may send that the pipeline can decode (python-gdcm,
# pyjpegls and pylibjpeg are installed for the compressed ones). pynetdicom picks,
# per presentation context, the FIRST of these the sender proposes, so the order
# is a policy: keep lossless-compressed data as sent (no transcoding by the
# sender, bytes stored as they were), then uncompressed, and accept lossy
# syntaxes only when nothing else is offered.
ACCEPTED_TRANSFER_SYNTAXES = [
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLSNearLossless,
    JPEG2000,
    HTJ2K,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
]
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, presentation-related: local limit exceeded


@dataclass
class _AssociationState:
    association_id: str
    calling_ae: str
    called_ae: str
    stored: int = 0
    failed: int = 0
    outcome: AssociationOutcome = AssociationOutcome.ABORTED
    lock: threading.Lock = field(default_factory=threading.Lock)


def rejection_reason(
    listener: ListenerSettings, peers: list[Peer], called_ae: str, calling_ae: str, address: str
) -> tuple[tuple[int, int, int], str] | None:
    """Why an association request must be rejected, or None to accept it."""
    if listener.require_called_ae and called_ae not in listener.called_ae_titles:
        return REJECT_CALLED_AE, f"called AE title {called_ae!r} is not this node's"
    if listener.restrict_calling_ae:
        known = {peer.ae_title: peer for peer in peers}
        peer = known.get(calling_ae)
        if peer is None:
            return REJECT_CALLING_AE, f"calling AE title {calling_ae!r} is not a known peer"
        if peer.host is not None and peer.host != address:
            return REJECT_CALLING_AE, (
                f"calling AE title {calling_ae!r} is known, but not from address {address}"
            )
    return None


class StorageSCP:
    """Runs the listener in background threads until :meth:`stop`."""

    def __init__(
        self,
        listener: ListenerSettings,
        peers: list[Peer],
        receiver: InstanceReceiver,
        sessions: sessionmaker[Session],
        on_association_closed: Callable[[], None] = lambda: None,
        reuse_port: bool = False,
    ) -> None:
        self._listener = listener
        self._reuse_port = reuse_port
        self._peers = peers
        self._receiver = receiver
        self._sessions = sessions
        self._on_closed = on_association_closed
        self._states: weakref.WeakKeyDictionary[Association, _AssociationState] = (
            weakref.WeakKeyDictionary()
        )
        self._server: GuardedAssociationServer | None = None
        self.guard = ConnectionGuard(GuardLimits.from_listener(listener), self._record_event)
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        # pynetdicom's "standard" handlers format every PDU and DIMSE message into
        # log text (with dataset identifiers) even when nobody reads it: CPU per
        # instance, and patient data one log-level change away from the logs.
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
        ae = AE(ae_title=self._listener.ae_title)
        for context in AllStoragePresentationContexts:
            abstract = context.abstract_syntax
            if abstract is None:  # pynetdicom's storage contexts all name one
                raise RuntimeError("pynetdicom storage context without an abstract syntax")
            ae.add_supported_context(abstract, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, UNCOMPRESSED)
        ae.require_called_aet = False  # checked in _on_requested, against several titles
        # Our limit counts accepted associations only (see _on_requested); pynetdicom's
        # counts every connection, pending ones included, and must never bite first.
        ae.maximum_associations = pynetdicom_association_limit(self._listener)
        ae.acse_timeout = self._listener.acse_timeout_s
        ae.dimse_timeout = self._listener.dimse_timeout_s
        ae.network_timeout = self._listener.network_timeout_s
        ae.maximum_pdu_size = self._listener.max_pdu_bytes
        return ae

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("listener not started")
        return int(self._server.server_address[1])

    @property
    def serving(self) -> bool:
        """True while the listener's socket is bound and its accept loop runs (``/ready``)."""
        return self._server is not None

    def start(self) -> None:
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_connection_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_connection_close),
        ]
        # make_server rather than start_server: only it takes a server_class.
        server = self.ae.make_server(
            (self._listener.host, self._listener.port),
            ssl_context=listener_ssl_context(self._listener.tls),
            evt_handlers=handlers,
            server_class=GuardedAssociationServer,
            guard=self.guard,
            reuse_port=self._reuse_port,
        )
        if not isinstance(server, GuardedAssociationServer):  # pragma: no cover - server_class
            raise TypeError(f"pynetdicom built a {type(server).__name__}")
        # As start_server does, so AE.shutdown() stops it too.
        self.ae._servers.append(server)
        threading.Thread(target=server.serve, name="AcceptorServer", daemon=True).start()
        self._server = server
        log.info(
            "DICOM listener started",
            extra={
                "ae_titles": sorted(self._listener.called_ae_titles),
                "host": self._listener.host,
                "port": self.port,
                "tls": self._listener.tls.enabled,
            },
        )

    def stop(self) -> None:
        # Established associations get an A-ABORT; the server's shutdown then closes
        # every other guarded connection. Not AE.shutdown() alone: it aborts pending
        # connections too, an event pynetdicom's state machine rejects in Sta2.
        for assoc in self.ae.active_associations:
            if assoc.is_established:
                assoc.abort()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    # -- handlers ---------------------------------------------------------

    def _on_connection_open(self, event: Event) -> None:
        # pynetdicom leaves Nagle on; our small C-STORE responses then wait for
        # the peer's delayed ACK (~40 ms each on loopback).
        sock = event.assoc.dul.socket
        if sock is not None and sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _record_event(self, kind: str, detail: dict[str, Any]) -> None:
        with self._sessions.begin() as session:
            record_node_event(session, kind, detail)

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if assoc.is_aborted or not isinstance(primitive, A_ASSOCIATE):
            return  # the connection closed before its request (see connection_guard)
        called = str(primitive.called_ae_title).strip()
        calling = str(primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        rejection = rejection_reason(self._listener, self._peers, called, calling, address)
        connection = connection_of(assoc)
        if rejection is None and not (
            connection is None
            or self.guard.reserve_association(connection, self._listener.max_associations)
        ):
            rejection = REJECT_LOCAL_LIMIT, (
                f"{self._listener.max_associations} associations already accepted"
            )
        if rejection is None:
            # Answer with the title the peer called, whichever of ours it was.
            assoc.acceptor.ae_title = called
            assoc.acceptor.supported_contexts = contexts_preferring_sender(
                primitive.presentation_context_definition_list,
                assoc.acceptor.supported_contexts,
            )
            return
        (result, source, diagnostic), reason = rejection
        log.warning(
            "association rejected: %s",
            reason,
            extra={"calling_ae": calling, "called_ae": called, "peer_address": address},
        )
        with self._sessions.begin() as session:
            record_node_event(
                session,
                "association_rejected",
                {"reason": reason, "calling_ae": calling, "called_ae": called, "address": address},
            )
        assoc.acse.send_reject(result, source, diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        state = _AssociationState(
            association_id=str(uuid.uuid4()),
            calling_ae=str(assoc.requestor.ae_title).strip(),
            called_ae=str(assoc.acceptor.ae_title).strip(),
        )
        self._states[assoc] = state
        self._refuse_stores_outside_storage(assoc, state)
        with self._sessions.begin() as session:
            record_association_opened(
                session,
                state.association_id,
                calling_ae=state.calling_ae,
                called_ae=state.called_ae,
                peer_address=str(assoc.requestor.address),
                peer_port=int(assoc.requestor.port),
                listener=f"{socket.gethostname()}:{os.getpid()}",
            )
        log.info(
            "association accepted",
            extra={
                "association_id": state.association_id,
                "calling_ae": state.calling_ae,
                "called_ae": state.called_ae,
                "peer_address": str(assoc.requestor.address),
            },
        )

    def _refuse_stores_outside_storage(self, assoc: Association, state: _AssociationState) -> None:
        """Answer a C-STORE naming a non-storage SOP class with a C-STORE-RSP 0x0122.

        Why: pynetdicom picks the service from the command's Affected SOP Class
        UID, so a C-STORE naming Verification is answered by the Verification
        SCP with a C-ECHO-RSP Success, and one naming a Query/Retrieve class
        aborts the association. Wrapping the association's dispatch (private in
        pynetdicom 3.0.4, which is pinned; the listener tests exercise it) keeps
        the bytes in quarantine and answers the way the sender asked.
        """
        serve = assoc._serve_request

        def serve_request(msg: Any, context_id: int) -> None:
            if isinstance(msg, C_STORE) and not _names_storage(msg.AffectedSOPClassUID):
                context = assoc._accepted_cx.get(context_id)
                if context is not None:
                    self._refuse_misnamed_store(assoc, state, msg, context)
                    return
            serve(msg, context_id)

        assoc._serve_request = serve_request  # type: ignore[method-assign]

    def _refuse_misnamed_store(
        self, assoc: Association, state: _AssociationState, msg: C_STORE, context: Any
    ) -> None:
        sop_class = str(msg.AffectedSOPClassUID or "")
        sop_instance = str(msg.AffectedSOPInstanceUID or "")
        dataset = msg.DataSet.getvalue() if msg.DataSet is not None else b""
        with log_context(association_id=state.association_id, calling_ae=state.calling_ae):
            outcome = self._receiver.refuse(
                part10_bytes(
                    transfer_syntax_uid=str(context.transfer_syntax[0]),
                    sop_class_uid=sop_class,
                    sop_instance_uid=sop_instance,
                    source_ae_title=state.calling_ae,
                    dataset=dataset,
                ),
                status=STATUS_SOP_CLASS_NOT_SUPPORTED,
                reason=f"C-STORE names {quoted_uid(sop_class)}, not a storage SOP class",
                sender=Sender(state.association_id, state.calling_ae, state.called_ae),
                command_sop_class_uid=sop_class,
                command_sop_instance_uid=sop_instance,
            )
        with state.lock:
            state.failed += 1
        response = C_STORE()
        response.MessageIDBeingRespondedTo = msg.MessageID
        response.AffectedSOPClassUID = msg.AffectedSOPClassUID
        response.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
        response.Status = outcome.status
        assoc.dimse.send_msg(response, context.context_id)

    def _on_store(self, event: Event) -> int:
        state = self._states.get(event.assoc)
        if state is None:  # pragma: no cover - pynetdicom only stores on accepted associations
            return STATUS_PROCESSING_FAILURE
        request = event.request
        if not isinstance(request, C_STORE):  # pragma: no cover - EVT_C_STORE carries a C-STORE
            raise TypeError(f"C-STORE handler got a {type(request).__name__} request")
        with log_context(association_id=state.association_id, calling_ae=state.calling_ae):
            file_bytes = _part10_bytes(event)
            outcome = self._receiver.receive(
                file_bytes,
                command_sop_class_uid=str(request.AffectedSOPClassUID),
                command_sop_instance_uid=str(request.AffectedSOPInstanceUID),
                context_sop_class_uid=str(event.context.abstract_syntax),
                sender=Sender(state.association_id, state.calling_ae, state.called_ae),
            )
        with state.lock:
            if outcome.status == 0:
                state.stored += 1
            else:
                state.failed += 1
        return outcome.status

    def _on_released(self, event: Event) -> None:
        state = self._states.get(event.assoc)
        if state is not None:
            state.outcome = AssociationOutcome.RELEASED

    def _on_connection_close(self, event: Event) -> None:
        state = self._states.pop(event.assoc, None)
        if state is None:
            return  # rejected before acceptance: already recorded
        with self._sessions.begin() as session:
            close_association(
                session, state.association_id, state.outcome, state.stored, state.failed
            )
        log.info(
            "association closed",
            extra={
                "association_id": state.association_id,
                "calling_ae": state.calling_ae,
                "outcome": str(state.outcome),
                "stored": state.stored,
                "failed": state.failed,
            },
        )
        self._on_closed()


def _names_storage(sop_class_uid: Any) -> bool:
    """Whether pynetdicom would hand a request naming this SOP class to the Storage SCP."""
    return pynetdicom_sop_classes.uid_to_service_class(str(sop_class_uid or "")) is StorageServiceClass


def _part10_bytes(event: Event) -> bytes:
    """The received dataset as a DICOM file: preamble, our file meta, the bytes as sent.

    The dataset is not decoded and re-encoded, so the stored file carries exactly
    the bytes the sender transmitted.
    """
    request = event.request
    return part10_bytes(
        transfer_syntax_uid=str(event.context.transfer_syntax),
        sop_class_uid=str(getattr(request, "AffectedSOPClassUID", "") or ""),
        sop_instance_uid=str(getattr(request, "AffectedSOPInstanceUID", "") or ""),
        source_ae_title=str(event.assoc.requestor.ae_title),
        dataset=event.encoded_dataset(include_meta=False),
    )
