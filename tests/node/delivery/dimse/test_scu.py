"""C-STORE to a DICOM AE (``dimse.scu``): one association, and every way it can fail, against a
scripted in-process pynetdicom SCP (``tests.node.delivery.peers.ScriptedScp``)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import SegmentationStorage  # type: ignore[attr-defined]

from segnode.node.delivery.dimse.contexts import read_headers
from segnode.node.delivery.dimse.scu import open_association, rejection_error, send_dimse
from segnode.node.delivery.outcome import (
    DeliveryReceipt,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tests.helpers import free_port
from tests.node.delivery.peers import ScriptedScp, dimse_destination, mr_files, sop_uid


def _rejection(result: int, source: int, diagnostic: int) -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, diagnostic
    return primitive


def test_rejections_say_which_ae_title_was_not_recognised() -> None:
    destination = dimse_destination(104, ae_title="PACS", calling_ae="SEGNODE")
    calling = rejection_error(destination, _rejection(1, 1, 3))
    assert isinstance(calling, PermanentDeliveryError)
    assert "calling AE title 'SEGNODE' not recognised" in str(calling)
    called = rejection_error(destination, _rejection(1, 1, 7))
    assert isinstance(called, PermanentDeliveryError)
    assert "called AE title 'PACS' not recognised" in str(called)
    busy = rejection_error(destination, _rejection(2, 3, 2))
    assert isinstance(busy, TransientDeliveryError)
    assert "Local limit exceeded" in str(busy)


def test_all_files_go_over_one_association_with_tcp_nodelay(scp: Callable[..., ScriptedScp]) -> None:
    files = mr_files(3)
    peer = scp()
    receipt = send_dimse(dimse_destination(peer.port), files)
    assert isinstance(receipt, DeliveryReceipt)
    assert receipt.sop_instance_uids == tuple(sop_uid(path) for path in files)
    assert peer.received == list(receipt.sop_instance_uids)
    assert set(receipt.statuses.values()) == {0x0000} and receipt.detail == ()
    peer.wait_released()  # one association, released

    headers = read_headers("pacs", files)
    assoc, _ = open_association(dimse_destination(peer.port), headers)
    try:
        assert assoc.dul.socket is not None
        tcp = assoc.dul.socket.socket
        assert tcp is not None and tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_the_association_calls_as_the_destinations_calling_ae(scp: Callable[..., ScriptedScp]) -> None:
    peer = scp(calling_aes=["SITE_NODE"])
    send_dimse(dimse_destination(peer.port, calling_ae="SITE_NODE"), mr_files(1))
    assert len(peer.received) == 1


def test_warning_status_counts_as_delivered_and_is_reported(scp: Callable[..., ScriptedScp]) -> None:
    files = mr_files(2)
    peer = scp([0x0000, 0xB000])
    receipt = send_dimse(dimse_destination(peer.port), files)
    assert list(receipt.statuses.values()) == [0x0000, 0xB000]
    assert len(receipt.detail) == 1 and "0xB000 Coercion of Data Elements" in receipt.detail[0]


def test_out_of_resources_is_transient_and_the_association_is_released(scp: Callable[..., ScriptedScp]) -> None:
    files = mr_files(3)
    peer = scp([0x0000, 0xA700])
    with pytest.raises(TransientDeliveryError, match="instance 2 of 3 .* 0xA700 Refused: Out of Resources") as caught:
        send_dimse(dimse_destination(peer.port), files)
    assert caught.value.cause == "store-status"
    assert caught.value.delivered == (sop_uid(files[0]),)
    assert len(peer.received) == 2  # the third was not sent
    peer.wait_released()


@pytest.mark.parametrize("status", [0xA900, 0xC000, 0x0122])
def test_failure_statuses_are_permanent(scp: Callable[..., ScriptedScp], status: int) -> None:
    peer = scp([status])
    with pytest.raises(PermanentDeliveryError, match=f"0x{status:04X}") as caught:
        send_dimse(dimse_destination(peer.port), mr_files(2))
    assert caught.value.delivered == ()
    peer.wait_released()


def test_sop_class_the_peer_does_not_support_is_permanent_and_nothing_is_sent(
    scp: Callable[..., ScriptedScp], tmp_path: Path
) -> None:
    """The peer supports MR only; a SEG class among the files fails the attempt up front.

    The SEG-class file is an MR file with its SOP Class UID changed: only the
    negotiation matters here (the real SEG is sent to DCMTK and Orthanc in the
    integration tests).
    """
    mr = mr_files(1)[0]
    dataset = pydicom.dcmread(mr)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    fake_seg = tmp_path / "seg-class.dcm"
    dataset.save_as(fake_seg)
    peer = scp()
    with pytest.raises(PermanentDeliveryError, match="no presentation context for Segmentation Storage") as caught:
        send_dimse(dimse_destination(peer.port), [mr, fake_seg])
    assert caught.value.cause == "no-presentation-context"
    assert peer.received == []


def test_unknown_calling_ae_rejected_at_association_is_permanent(scp: Callable[..., ScriptedScp]) -> None:
    peer = scp(calling_aes=["SOMEONE"])
    with pytest.raises(PermanentDeliveryError, match="calling AE title 'SEGNODE' not recognised"):
        send_dimse(dimse_destination(peer.port), mr_files(1))


def test_transient_rejection_is_transient(scp: Callable[..., ScriptedScp]) -> None:
    peer = scp(reject=(0x02, 0x03, 0x01))  # rejected-transient, temporary congestion
    with pytest.raises(TransientDeliveryError, match="rejected \\(transient\\).*Temporary congestion") as caught:
        send_dimse(dimse_destination(peer.port), mr_files(1))
    assert caught.value.cause == "association-rejected"


def test_nothing_listening_is_transient_connection_refused() -> None:
    port = free_port()  # bound and closed again: nothing listens there
    with pytest.raises(TransientDeliveryError, match="Connection refused") as caught:
        send_dimse(dimse_destination(port), mr_files(1))
    assert caught.value.cause == "connection-failed"


def test_peer_that_never_answers_the_association_request_is_transient() -> None:
    with socket.socket() as silent:  # the kernel accepts the connection; nobody speaks DICOM
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(TransientDeliveryError, match="no answer to the association request within 1 s"):
            send_dimse(dimse_destination(port, timeout_s=1), mr_files(1))
