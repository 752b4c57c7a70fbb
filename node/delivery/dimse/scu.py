"""Sending result files to a DICOM AE: one association, one C-STORE per file.

* **Contexts.** Exactly the files' SOP classes in their own transfer syntaxes
  (:mod:`segnode.node.delivery.dimse.contexts`); files no accepted context can carry fail the
  attempt before anything is sent.
* **As-is.** Files are read with pydicom and re-encoded by pynetdicom in their
  own transfer syntax: values are unchanged and a pydicom-written file (every
  SEG/SR the node makes) goes out byte for byte; group length elements
  (gggg,0000), retired, are not sent.
* **Transport.** TCP_NODELAY, and the reason a connect failed
  (:mod:`segnode.node.delivery.dimse.transport`); ACSE, DIMSE, network and connect timeouts are
  all the destination's ``timeout_s``.
* **TLS.** With ``tls.enabled`` the association runs over DICOM TLS
  (:func:`segnode.node.tls.destination_ssl_context`, built per association so renewed
  certificate files are picked up); the server name checked is ``host``.
* **Classification.** Permanent: A-ASSOCIATE-RJ "rejected-permanent" (the
  message names the unrecognised calling or called AE title), no accepted
  context, a failure status other than 0xA7xx/0x0213, an unreadable file.
  A TLS failure is permanent too (cause ``tls-failed``): a certificate not
  accepted either way, a hostname mismatch, a peer that does not speak TLS;
  so is a TLS file of ours that cannot be loaded (``tls-config``).
  Transient: connection refused or timed out, "rejected-transient", an abort
  or a missing response (the association is gone), 0xA7xx "out of resources",
  a connection closed during the TLS handshake.

Orthanc 1.10.1 does not reject an unknown calling AE title at association
time: it accepts the association, then aborts it (A-ABORT) on the first
C-STORE request. From the wire this is indistinguishable from a peer that
aborted for a passing reason, so it stays transient (a retry succeeds as soon
as the PACS's modality list is fixed); the message names that likely cause.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from segnode.config.destinations import DimseDestination
from segnode.node.delivery.dimse.contexts import (
    MAX_PRESENTATION_CONTEXTS,
    FileHeader,
    missing_contexts,
    read_headers,
    requested_contexts,
)
from segnode.node.delivery.dimse.status import describe_status, is_delivered, is_transient_status
from segnode.node.delivery.dimse.transport import NoDelayAE, PeerWatch, RecordingTLSSocket
from segnode.node.delivery.outcome import (
    DeliveryError,
    DeliveryReceipt,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from segnode.node.tls import destination_ssl_context

log = logging.getLogger(__name__)

# PS3.8 Table 9-21 (A-ASSOCIATE-RJ), result source 1 "service user": reason codes.
_CALLING_AE_NOT_RECOGNIZED = 3
_CALLED_AE_NOT_RECOGNIZED = 7


def rejection_error(destination: DimseDestination, rejection: A_ASSOCIATE) -> DeliveryError:
    """The error for an A-ASSOCIATE-RJ, naming which AE title was not recognised."""
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    reason = rejection.reason_str
    if rejection.result_source == 1 and rejection.diagnostic == _CALLING_AE_NOT_RECOGNIZED:
        reason = (
            f"calling AE title {destination.calling_ae!r} not recognised; "
            "add it to the peer's list of known modalities"
        )
    elif rejection.result_source == 1 and rejection.diagnostic == _CALLED_AE_NOT_RECOGNIZED:
        reason = (
            f"called AE title {destination.ae_title!r} not recognised; "
            "check the destination's ae_title"
        )
    if rejection.result == 2:
        return TransientDeliveryError(
            destination.name,
            f"association rejected (transient) by {where}: {reason}",
            cause="association-rejected",
        )
    return PermanentDeliveryError(
        destination.name,
        f"association rejected (permanent) by {where}: {reason}",
        cause="association-rejected",
    )


def tls_error(destination: DimseDestination, error: OSError, *, handshake: bool) -> DeliveryError:
    """The error for a failed TLS handshake, or a TLS alert on the first read.

    Permanent but for a connection closed mid-handshake: a certificate one side
    does not accept needs a configuration change on one side before a retry can
    succeed. A closed connection may be a restart; it is also what a peer without
    TLS on that port does (DCMTK 3.6.7 resets it), so the message says so.
    """
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    when = "TLS handshake with" if handshake else "TLS session with"
    if not isinstance(error, ssl.SSLError) or isinstance(error, ssl.SSLEOFError):
        return TransientDeliveryError(
            destination.name,
            f"{when} {where} failed: the peer closed the connection "
            f"({error.strerror or type(error).__name__}); check that it speaks TLS on this port",
            cause="tls-failed",
        )
    if isinstance(error, ssl.SSLCertVerificationError):
        why = str(error.verify_message)
        hint = (
            "the certificate does not name the host; check the destination's host "
            "or tls.check_hostname"
            if "mismatch" in why
            else "check the destination's tls.ca_file"
        )
        message = f"the destination's certificate was not accepted ({why}); {hint}"
    else:
        reason = str(error.reason or error).lower().replace("_", " ")
        if "alert" in reason and destination.tls.cert_file is None:
            message = (
                f"the destination refused us ({reason}): it wants a client certificate; "
                "set tls.cert_file and tls.key_file"
            )
        elif "alert" in reason:
            message = (
                f"the destination refused us ({reason}): check that the CA it trusts "
                "signed our client certificate (tls.cert_file)"
            )
        elif "wrong version number" in reason or "record layer failure" in reason:
            message = f"{reason}: the destination does not seem to speak TLS on this port"
        else:
            message = reason
    return PermanentDeliveryError(
        destination.name, f"{when} {where} failed: {message}", cause="tls-failed"
    )


def _not_established_error(
    destination: DimseDestination, ae: NoDelayAE, assoc: Association, watch: PeerWatch, started: float
) -> DeliveryError:
    where = f"{destination.host}:{destination.port}"
    tcp_socket = ae.last_socket.tcp_socket if ae.last_socket is not None else None
    if isinstance(tcp_socket, RecordingTLSSocket):
        # Refused and timed out are TCP's answers; a reset or EOF came after TCP connected.
        if isinstance(tcp_socket.connect_error, ssl.SSLError | ConnectionResetError | BrokenPipeError):
            return tls_error(destination, tcp_socket.connect_error, handshake=True)
        if tcp_socket.read_error is not None:
            return tls_error(destination, tcp_socket.read_error, handshake=False)
    if tcp_socket is not None and tcp_socket.connect_error is not None:
        error = tcp_socket.connect_error
        reason = error.strerror or type(error).__name__
        if isinstance(error, TimeoutError):
            reason = f"no answer within {destination.timeout_s:g} s"
        return TransientDeliveryError(
            destination.name, f"cannot connect to {where}: {reason}", cause="connection-failed"
        )
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and isinstance(answer, A_ASSOCIATE):
        return rejection_error(destination, answer)
    if watch.rejection is not None:
        return rejection_error(destination, watch.rejection.to_primitive())
    if isinstance(answer, A_ASSOCIATE) and answer.result == 0 and not assoc.accepted_contexts:
        # The rejected contexts carry the peer's answer; the proposal is in the request.
        proposed = {cx.context_id: cx for cx in assoc.requestor.requested_contexts}
        refused = "; ".join(
            f"{UID(str(cx.abstract_syntax)).name} in "
            f"{', '.join(UID(ts).name for ts in proposed[cx.context_id].transfer_syntax)} "
            f"({cx.status.lower()})"
            for cx in assoc.rejected_contexts
            if cx.context_id in proposed
        )
        return PermanentDeliveryError(
            destination.name,
            f"{destination.ae_title}@{where} accepted no presentation context at all: {refused}",
            cause="no-presentation-context",
        )
    waited_s = time.monotonic() - started
    if watch.abort is not None:
        how = "the peer aborted the association request"
    elif waited_s >= destination.timeout_s:
        how = f"no answer to the association request within {destination.timeout_s:g} s"
    else:
        how = "the peer closed the connection during association negotiation"
    return TransientDeliveryError(
        destination.name,
        f"association with {destination.ae_title}@{where} not established: {how}",
        cause="association-aborted",
    )


def _no_response_error(
    destination: DimseDestination,
    watch: PeerWatch,
    position: str,
    delivered: tuple[str, ...],
    waited_s: float,
) -> DeliveryError:
    """The association ended before the peer answered a C-STORE: always transient."""
    abort = watch.abort
    if abort is not None and abort.source == 0:
        how = "the peer aborted the association (A-ABORT from the service user)"
        if not delivered:
            how += (
                "; a PACS such as Orthanc 1.10 does this when it does not know the calling "
                f"AE title {destination.calling_ae!r}: check that it is registered there"
            )
    elif abort is not None:
        how = f"the peer's DICOM protocol layer aborted the association ({abort.reason_str})"
    elif waited_s >= destination.timeout_s:
        how = f"no response within the {destination.timeout_s:g} s timeout; association aborted"
    else:
        how = "the peer closed the connection"
    return TransientDeliveryError(
        destination.name,
        f"no C-STORE response for {position}: {how}",
        cause="association-aborted",
        delivered=delivered,
    )


def open_association(
    destination: DimseDestination, headers: Sequence[FileHeader]
) -> tuple[Association, PeerWatch]:
    """Associate with the destination, proposing the files' contexts.

    Returns:
        The established association and the watch that records a peer's A-ABORT.

    Raises:
        TransientDeliveryError: unreachable, rejected transiently, timed out, aborted.
        PermanentDeliveryError: rejected permanently, or no context accepted.
    """
    contexts = requested_contexts(headers)
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise PermanentDeliveryError(
            destination.name,
            f"{len(contexts)} distinct SOP class/transfer syntax pairs, more than one "
            f"association can carry ({MAX_PRESENTATION_CONTEXTS})",
            cause="too-many-contexts",
        )
    try:
        context = destination_ssl_context(destination.tls)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise PermanentDeliveryError(
            destination.name, f"cannot load the TLS certificates or key: {exc}", cause="tls-config"
        ) from exc
    ae = NoDelayAE(ae_title=destination.calling_ae)
    ae.acse_timeout = destination.timeout_s
    ae.dimse_timeout = destination.timeout_s
    ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    watch = PeerWatch()
    started = time.monotonic()
    assoc = ae.associate(
        destination.host,
        destination.port,
        contexts=contexts,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_PDU_RECV, watch.on_pdu)],
        tls_args=(context, destination.host) if context is not None else None,
    )
    if not assoc.is_established:
        raise _not_established_error(destination, ae, assoc, watch, started)
    return assoc, watch


def send_dimse(destination: DimseDestination, files: Sequence[Path]) -> DeliveryReceipt:
    """C-STORE every file to ``destination`` over one association (one attempt).

    Files are read with pydicom and sent as they are, with their file meta's
    transfer syntax (or re-encoded to Explicit/Implicit VR Little Endian when
    uncompressed and the peer prefers it). A Success or Warning status counts as
    delivered; the first other status ends the attempt.

    Raises:
        TransientDeliveryError: retry later (see :mod:`segnode.node.delivery.outcome`).
        PermanentDeliveryError: do not retry.
    """
    started = time.monotonic()
    headers = read_headers(destination.name, files)
    if not headers:
        return DeliveryReceipt(destination.name, (), {}, 0.0)
    assoc, watch = open_association(destination, headers)
    statuses: dict[str, int] = {}
    detail: list[str] = []
    try:
        missing = missing_contexts(assoc, headers)
        if missing:
            raise PermanentDeliveryError(
                destination.name,
                f"{destination.ae_title}@{destination.host}:{destination.port} accepted no "
                f"presentation context for {'; '.join(missing)} (SOP class or transfer "
                "syntax not supported)",
                cause="no-presentation-context",
            )
        for index, header in enumerate(headers, 1):
            position = f"instance {index} of {len(headers)} ({header.sop_class_uid.name})"
            delivered = tuple(statuses)
            if not assoc.is_established:
                raise _no_response_error(destination, watch, position, delivered, 0.0)
            dataset = _read_dataset(destination.name, header)
            sent_at = time.monotonic()
            try:
                response = assoc.send_c_store(dataset)
            except (ValueError, AttributeError) as exc:
                # pynetdicom found no usable context or could not encode the dataset.
                raise PermanentDeliveryError(
                    destination.name,
                    f"cannot send {position}: {exc}",
                    cause="encoding",
                    delivered=delivered,
                ) from exc
            status = response.get("Status")
            if status is None:
                waited_s = time.monotonic() - sent_at
                raise _no_response_error(destination, watch, position, delivered, waited_s)
            status = int(status)
            if not is_delivered(status):
                kind = (
                    TransientDeliveryError
                    if is_transient_status(status)
                    else PermanentDeliveryError
                )
                comment = str(response.get("ErrorComment", "")).strip()
                raise kind(
                    destination.name,
                    f"{position} refused with status {describe_status(status)}"
                    + (f" ({comment})" if comment else ""),
                    cause="store-status",
                    delivered=delivered,
                )
            statuses[header.sop_instance_uid] = status
            if status != 0x0000:
                detail.append(f"{position}: warning {describe_status(status)}")
            log.debug(
                "instance delivered",
                extra={
                    "destination": destination.name,
                    "sop_instance_uid": header.sop_instance_uid,
                    "status": status,
                },
            )
    except DeliveryError:
        _end(assoc, release=True)
        raise
    except BaseException:
        _end(assoc, release=False)
        raise
    _end(assoc, release=True)
    return DeliveryReceipt(
        destination=destination.name,
        sop_instance_uids=tuple(statuses),
        statuses=statuses,
        duration_s=time.monotonic() - started,
        detail=tuple(detail),
    )


def _read_dataset(destination: str, header: FileHeader) -> Dataset:
    try:
        return dcmread(header.path)
    except (OSError, InvalidDicomError, ValueError) as exc:
        raise PermanentDeliveryError(
            destination, f"cannot read result file {header.path.name}: {exc}", cause="invalid-file"
        ) from exc


def _end(assoc: Association, *, release: bool) -> None:
    """Release a healthy association; abort one we are leaving because of a bug."""
    if not assoc.is_established:
        return
    if release:
        assoc.release()
    else:
        assoc.abort()


def echo_dimse(destination: DimseDestination) -> float:
    """C-ECHO the destination as a delivery would reach it (same AE titles, TLS, timeouts).

    Returns the round trip in seconds, association included: the dashboard's
    "test this destination" button.

    Raises:
        TransientDeliveryError / PermanentDeliveryError: not reachable, refused, or a
            non-success status, described as a delivery failure would be.
    """
    try:
        context = destination_ssl_context(destination.tls)
    except (OSError, ValueError) as exc:
        raise PermanentDeliveryError(
            destination.name, f"cannot load the TLS certificates or key: {exc}", cause="tls-config"
        ) from exc
    ae = NoDelayAE(ae_title=destination.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    ae.add_requested_context(Verification)
    watch = PeerWatch()
    started = time.monotonic()
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_PDU_RECV, watch.on_pdu)],
        tls_args=(context, destination.host) if context is not None else None,
    )
    if not assoc.is_established:
        raise _not_established_error(destination, ae, assoc, watch, started)
    try:
        status = assoc.send_c_echo()
    finally:
        _end(assoc, release=True)
    code = int(status.Status) if "Status" in status else None
    if code != 0:
        raise TransientDeliveryError(
            destination.name,
            "no C-ECHO response" if code is None else f"C-ECHO status {describe_status(code)}",
            cause="echo-failed",
        )
    return time.monotonic() - started
