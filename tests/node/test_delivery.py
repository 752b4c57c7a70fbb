"""Delivery without external programs: backoff, classification, and in-process pynetdicom peers.

The peers are real pynetdicom Storage SCPs and a standard-library HTTP server
on loopback, scripted to answer with the statuses, rejections and HTTP answers
a PACS can send (Orthanc and DCMTK never return 0xA700, 0xB000 or 503 on
demand; tests/integration/test_delivery_peers.py covers those programs). The
files are real scanner files from ../shared/data.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import MRImageStorage, SegmentationStorage  # type: ignore[attr-defined]

from segnode.config.settings import Destination
from segnode.node.backoff import backoff_delay_s
from segnode.node.delivery.dimse.contexts import FileHeader, read_headers, requested_contexts
from segnode.node.delivery.dimse.scu import open_association, rejection_error
from segnode.node.delivery.dimse.status import is_delivered, is_transient_status
from segnode.node.delivery.dispatch import (
    DeliveryReceipt,
    PermanentDeliveryError,
    TransientDeliveryError,
    send_files,
)
from segnode.node.delivery.stow import multipart_body, parse_answer
from tests.helpers import free_port, require_shared_data, wait_for

MR_FOLDER = "siemens_prisma_E11_t1_fl2d_sag_HFS"


def _mr_files(count: int) -> list[Path]:
    return sorted((require_shared_data() / MR_FOLDER).iterdir())[:count]


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _destination(port: int, **changes: object) -> Destination:
    values: dict[str, object] = {
        "name": "pacs",
        "ae_title": "PEER",
        "host": "127.0.0.1",
        "port": port,
        "calling_ae": "SEGNODE",
        "timeout_s": 5,
    }
    return Destination.model_validate({**values, **changes})


class ScriptedScp:
    """A pynetdicom Storage SCP for MR that answers C-STOREs with scripted statuses.

    One runs per module (pynetdicom's server takes ~0.5 s to shut down);
    :meth:`script` resets it for each test.
    """

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.reject: tuple[int, int, int] | None = None
        self.received: list[str] = []
        self.events: list[str] = []
        self.port = free_port()
        self.ae = AE(ae_title="PEER")
        self.ae.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_RELEASED, lambda event: self.events.append("released")),
            (evt.EVT_ABORTED, lambda event: self.events.append("aborted")),
        ]
        server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        assert server is not None
        self.server = server

    def script(self, statuses: list[int] | None = None, *, reject: tuple[int, int, int] | None = None,
               calling_aes: list[str] | None = None) -> ScriptedScp:
        # An association of the previous test may still be recording its end.
        wait_for(lambda: not self.server.active_associations, 5, "the previous associations to end")
        self.statuses, self.reject = list(statuses or []), reject
        self.ae.require_calling_aet = calling_aes or []
        self.received, self.events = [], []
        return self

    def wait_released(self) -> None:
        """The SCP records the release after answering it, so the sender may return first."""
        wait_for(lambda: self.events == ["released"], 5, f"one released association (got {self.events})")

    def _on_requested(self, event: Event) -> None:
        if self.reject is not None:
            event.assoc.acse.send_reject(*self.reject)
            event.assoc.kill()

    def _on_store(self, event: Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        self.received.append(str(request.AffectedSOPInstanceUID))
        return self.statuses.pop(0) if self.statuses else 0x0000


@pytest.fixture(scope="module")
def _running_scp() -> Iterator[ScriptedScp]:
    peer = ScriptedScp()
    yield peer
    peer.server.shutdown()


@pytest.fixture
def scp(_running_scp: ScriptedScp) -> Callable[..., ScriptedScp]:
    """Script the module's SCP: ``scp(statuses, reject=..., calling_aes=...)``."""
    return _running_scp.script


# --- backoff ---------------------------------------------------------------------------


def test_backoff_doubles_from_the_initial_delay_and_stops_at_the_cap() -> None:
    delays = [backoff_delay_s(attempt, 5.0, 600.0) for attempt in range(1, 11)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0, 600.0]
    assert backoff_delay_s(10_000, 5.0, 600.0) == 600.0  # no overflow for absurd attempt counts
    assert backoff_delay_s(3, 0.5, 1.0) == 1.0


def test_backoff_refuses_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt counts from 1"):
        backoff_delay_s(0, 5.0, 600.0)


# --- classification without a peer ----------------------------------------------------


@pytest.mark.parametrize(("status", "delivered", "transient"), [
    (0x0000, True, False),
    (0xB000, True, False),
    (0xB007, True, False),
    (0xA700, False, True),
    (0xA7FF, False, True),
    (0x0213, False, True),
    (0xA900, False, False),
    (0xC000, False, False),
    (0x0122, False, False),
    (0x0124, False, False),
    (0x0110, False, False),
])
def test_store_statuses_are_classified(status: int, delivered: bool, transient: bool) -> None:
    assert is_delivered(status) is delivered
    assert is_transient_status(status) is transient


def _rejection(result: int, source: int, diagnostic: int) -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, diagnostic
    return primitive


def test_rejections_say_which_ae_title_was_not_recognised() -> None:
    destination = _destination(104, ae_title="PACS", calling_ae="SEGNODE")
    calling = rejection_error(destination, _rejection(1, 1, 3))
    assert isinstance(calling, PermanentDeliveryError)
    assert "calling AE title 'SEGNODE' not recognised" in str(calling)
    called = rejection_error(destination, _rejection(1, 1, 7))
    assert isinstance(called, PermanentDeliveryError)
    assert "called AE title 'PACS' not recognised" in str(called)
    busy = rejection_error(destination, _rejection(2, 3, 2))
    assert isinstance(busy, TransientDeliveryError)
    assert "Local limit exceeded" in str(busy)


def test_contexts_offer_each_files_own_syntax_and_little_endian_fallbacks_separately() -> None:
    seg, mr = UID(SegmentationStorage), UID(MRImageStorage)
    headers = [
        FileHeader(Path("seg.dcm"), seg, "1.1", ExplicitVRLittleEndian),
        FileHeader(Path("a.dcm"), mr, "1.2", ImplicitVRLittleEndian),
        FileHeader(Path("b.dcm"), mr, "1.3", JPEG2000Lossless),
        FileHeader(Path("c.dcm"), mr, "1.4", ImplicitVRLittleEndian),
        FileHeader(Path("d.dcm"), mr, "1.5", ExplicitVRBigEndian),
        FileHeader(Path("e.dcm"), seg, "1.6", DeflatedExplicitVRLittleEndian),
    ]
    proposed = [(str(cx.abstract_syntax), list(cx.transfer_syntax)) for cx in requested_contexts(headers)]
    assert proposed == [
        (seg, [ExplicitVRLittleEndian]),
        (seg, [DeflatedExplicitVRLittleEndian]),
        (mr, [ImplicitVRLittleEndian]),
        (mr, [JPEG2000Lossless]),  # compressed: never transcoded, no fallback
        (mr, [ExplicitVRBigEndian]),  # pynetdicom cannot change endianness
        (seg, [ImplicitVRLittleEndian]),
        (mr, [ExplicitVRLittleEndian]),
    ]


def test_unreadable_file_is_permanent(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(PermanentDeliveryError, match="cannot read result file junk.dcm") as caught:
        read_headers("pacs", [junk])
    assert caught.value.cause == "invalid-file"


# --- STOW-RS message format -----------------------------------------------------------


def test_multipart_body_carries_each_file_unchanged() -> None:
    files = [b"\x00DICM first", b"second\r\n--with a dash line"]
    body, content_type = multipart_body(files)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    message = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = [part for part in message.walk() if not part.is_multipart()]
    assert [part.get_content_type() for part in parts] == ["application/dicom"] * 2
    assert [part.get_payload(decode=True) for part in parts] == files


def test_stow_answer_is_read_from_dicom_json() -> None:
    # The shape orthanc-dicomweb 1.7 returns (HTTP 409 for a study URL the instance is not in).
    answer = {
        "00081190": {"vr": "UR", "Value": ["http://pacs/dicom-web/studies/1.2"]},
        "00081198": {"vr": "SQ", "Value": [{
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.66.4"]},
            "00081155": {"vr": "UI", "Value": ["1.2.3.4"]},
            "00081197": {"vr": "US", "Value": [272]},
        }]},
        "00081199": {"vr": "SQ", "Value": [{
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.34"]},
            "00081155": {"vr": "UI", "Value": ["1.2.3.5"]},
            "00081196": {"vr": "US", "Value": [0xB000]},
        }]},
    }
    parsed = parse_answer(json.dumps(answer).encode())
    assert parsed is not None
    assert parsed.failed == {"1.2.3.4": 0x0110}
    assert parsed.stored == {"1.2.3.5": 0xB000}
    assert parse_answer(b"") is None and parse_answer(b"<html>") is None


# --- in-process pynetdicom peers --------------------------------------------------------


def test_all_files_go_over_one_association_with_tcp_nodelay(scp: Callable[..., ScriptedScp]) -> None:
    files = _mr_files(3)
    peer = scp()
    receipt = send_files(_destination(peer.port), files)
    assert isinstance(receipt, DeliveryReceipt)
    assert receipt.sop_instance_uids == tuple(_sop_uid(path) for path in files)
    assert peer.received == list(receipt.sop_instance_uids)
    assert set(receipt.statuses.values()) == {0x0000} and receipt.detail == ()
    peer.wait_released()  # one association, released

    headers = read_headers("pacs", files)
    assoc, _ = open_association(_destination(peer.port), headers)
    try:
        assert assoc.dul.socket is not None
        tcp = assoc.dul.socket.socket
        assert tcp is not None and tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_warning_status_counts_as_delivered_and_is_reported(scp: Callable[..., ScriptedScp]) -> None:
    files = _mr_files(2)
    peer = scp([0x0000, 0xB000])
    receipt = send_files(_destination(peer.port), files)
    assert list(receipt.statuses.values()) == [0x0000, 0xB000]
    assert len(receipt.detail) == 1 and "0xB000 Coercion of Data Elements" in receipt.detail[0]


def test_out_of_resources_is_transient_and_the_association_is_released(scp: Callable[..., ScriptedScp]) -> None:
    files = _mr_files(3)
    peer = scp([0x0000, 0xA700])
    with pytest.raises(TransientDeliveryError, match="instance 2 of 3 .* 0xA700 Refused: Out of Resources") as caught:
        send_files(_destination(peer.port), files)
    assert caught.value.cause == "store-status"
    assert caught.value.delivered == (_sop_uid(files[0]),)
    assert len(peer.received) == 2  # the third was not sent
    peer.wait_released()


@pytest.mark.parametrize("status", [0xA900, 0xC000, 0x0122])
def test_failure_statuses_are_permanent(scp: Callable[..., ScriptedScp], status: int) -> None:
    peer = scp([status])
    with pytest.raises(PermanentDeliveryError, match=f"0x{status:04X}") as caught:
        send_files(_destination(peer.port), _mr_files(2))
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
    mr = _mr_files(1)[0]
    dataset = pydicom.dcmread(mr)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    fake_seg = tmp_path / "seg-class.dcm"
    dataset.save_as(fake_seg)
    peer = scp()
    with pytest.raises(PermanentDeliveryError, match="no presentation context for Segmentation Storage") as caught:
        send_files(_destination(peer.port), [mr, fake_seg])
    assert caught.value.cause == "no-presentation-context"
    assert peer.received == []


def test_unknown_calling_ae_rejected_at_association_is_permanent(scp: Callable[..., ScriptedScp]) -> None:
    peer = scp(calling_aes=["SOMEONE"])
    with pytest.raises(PermanentDeliveryError, match="calling AE title 'SEGNODE' not recognised"):
        send_files(_destination(peer.port), _mr_files(1))


def test_transient_rejection_is_transient(scp: Callable[..., ScriptedScp]) -> None:
    peer = scp(reject=(0x02, 0x03, 0x01))  # rejected-transient, temporary congestion
    with pytest.raises(TransientDeliveryError, match="rejected \\(transient\\).*Temporary congestion") as caught:
        send_files(_destination(peer.port), _mr_files(1))
    assert caught.value.cause == "association-rejected"


def test_nothing_listening_is_transient_connection_refused() -> None:
    port = free_port()  # bound and closed again: nothing listens there
    with pytest.raises(TransientDeliveryError, match="Connection refused") as caught:
        send_files(_destination(port), _mr_files(1))
    assert caught.value.cause == "connection-failed"


def test_peer_that_never_answers_the_association_request_is_transient() -> None:
    with socket.socket() as silent:  # the kernel accepts the connection; nobody speaks DICOM
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(TransientDeliveryError, match="no answer to the association request within 1 s"):
            send_files(_destination(port, timeout_s=1), _mr_files(1))


class ScriptedHttp:
    """A loopback HTTP server answering every POST with one scripted response, keeping the requests."""

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                outer.requests.append((dict(self.headers), self.rfile.read(length)))
                self.send_response(status)
                for key, value in (headers or {"Content-Type": "application/dicom+json"}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web/studies"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http() -> Iterator[Callable[..., ScriptedHttp]]:
    started: list[ScriptedHttp] = []

    def launch(*args: Any, **kwargs: Any) -> ScriptedHttp:
        server = ScriptedHttp(*args, **kwargs)
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


def _stow_answer(stored: dict[str, int], failed: dict[str, int]) -> bytes:
    def items(uids: dict[str, int], reason_tag: str) -> list[dict[str, Any]]:
        return [{"00081155": {"vr": "UI", "Value": [uid]},
                 **({reason_tag: {"vr": "US", "Value": [code]}} if code else {})} for uid, code in uids.items()]

    return json.dumps({"00081199": {"vr": "SQ", "Value": items(stored, "00081196")},
                       "00081198": {"vr": "SQ", "Value": items(failed, "00081197")}}).encode()


def _stow(url: str) -> Destination:
    return Destination(name="web", protocol="stow-rs", url=url, timeout_s=5)


def test_stow_request_carries_the_files_and_a_warning_is_reported(http: Callable[..., ScriptedHttp]) -> None:
    files = _mr_files(2)
    uids = [_sop_uid(path) for path in files]
    server = http(200, _stow_answer({uids[0]: 0, uids[1]: 0xB000}, {}))
    receipt = send_files(_stow(server.url), files)
    assert receipt.statuses == {uids[0]: 0x0000, uids[1]: 0xB000}
    assert len(receipt.detail) == 1 and "0xB000" in receipt.detail[0]
    [(headers, body)] = server.requests
    assert headers["Accept"] == "application/dicom+json"
    message = message_from_bytes(f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    parts = [part.get_payload(decode=True) for part in message.walk() if not part.is_multipart()]
    assert parts == [path.read_bytes() for path in files]


def test_stow_out_of_resources_for_some_instances_is_transient(http: Callable[..., ScriptedHttp]) -> None:
    files = _mr_files(2)
    uids = [_sop_uid(path) for path in files]
    server = http(202, _stow_answer({uids[0]: 0}, {uids[1]: 0xA700}))
    with pytest.raises(TransientDeliveryError, match="refused 1 of 2 instances.*0xA700") as caught:
        send_files(_stow(server.url), files)
    assert caught.value.delivered == (uids[0],)


@pytest.mark.parametrize(("status", "error", "text"), [
    (503, TransientDeliveryError, "HTTP 503"),
    (429, TransientDeliveryError, "HTTP 429"),
    (400, PermanentDeliveryError, "HTTP 400"),
    (415, PermanentDeliveryError, "HTTP 415"),
])
def test_stow_http_errors_are_classified(
    http: Callable[..., ScriptedHttp], status: int, error: type[Exception], text: str
) -> None:
    server = http(status)
    with pytest.raises(error, match=text):
        send_files(_stow(server.url), _mr_files(1))


def test_uids_reach_the_logs_only_at_debug(
    http: Callable[..., ScriptedHttp], caplog: pytest.LogCaptureFixture
) -> None:
    files = _mr_files(2)
    uids = [_sop_uid(path) for path in files]
    server = http(409, _stow_answer({}, {uid: 0x0110 for uid in uids}))
    caplog.set_level(logging.DEBUG, logger="node")
    with pytest.raises(PermanentDeliveryError) as caught:
        send_files(_stow(server.url), files)
    assert all(uid in str(caught.value) for uid in uids)  # the job's event log gets them
    for record in caplog.records:
        text = json.dumps(vars(record), default=str)
        if record.levelno > logging.DEBUG:
            assert not any(uid in text for uid in uids), record.getMessage()
    assert any(record.levelno == logging.WARNING and getattr(record, "cause", None) == "stow-failed-sop"
               for record in caplog.records)


def test_stow_redirect_is_not_followed(http: Callable[..., ScriptedHttp]) -> None:
    server = http(302, headers={"Location": "http://elsewhere/login"})
    with pytest.raises(PermanentDeliveryError, match="HTTP 302.*redirects to http://elsewhere/login"):
        send_files(_stow(server.url), _mr_files(1))
    assert len(server.requests) == 1


def test_stow_200_without_a_dicom_json_answer_confirms_nothing(http: Callable[..., ScriptedHttp]) -> None:
    server = http(200, b"<html>welcome</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(PermanentDeliveryError, match="without a DICOM JSON response") as caught:
        send_files(_stow(server.url), _mr_files(1))
    assert caught.value.cause == "stow-unacknowledged"


def test_stow_connection_refused_is_transient() -> None:
    destination = _stow(f"http://127.0.0.1:{free_port()}/dicom-web/studies")
    with pytest.raises(TransientDeliveryError, match="Connection refused") as caught:
        send_files(destination, _mr_files(1))
    assert caught.value.cause == "connection-failed"
