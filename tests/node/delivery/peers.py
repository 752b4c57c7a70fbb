"""Scripted delivery peers and the files and destinations the delivery tests send.

The peers are real pynetdicom Storage SCPs and a standard-library HTTP server on
loopback, scripted to answer with the statuses, rejections and HTTP answers a PACS
can send (Orthanc and DCMTK never return 0xA700, 0xB000 or 503 on demand;
tests/integration/test_delivery_peers.py covers those programs). The files are real
scanner files from ../shared/data.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from segnode.config.destinations import DimseDestination, StowDestination
from tests.helpers import free_port, require_shared_data, wait_for

MR_FOLDER = "siemens_prisma_E11_t1_fl2d_sag_HFS"


def mr_files(count: int) -> list[Path]:
    return sorted((require_shared_data() / MR_FOLDER).iterdir())[:count]


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def dimse_destination(port: int, **changes: object) -> DimseDestination:
    values: dict[str, object] = {
        "name": "pacs",
        "ae_title": "PEER",
        "host": "127.0.0.1",
        "port": port,
        "calling_ae": "SEGNODE",
        "timeout_s": 5,
    }
    return DimseDestination.model_validate({**values, **changes})


def stow_destination(url: str) -> StowDestination:
    return StowDestination(name="web", url=url, timeout_s=5)


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


def stow_answer(stored: dict[str, int], failed: dict[str, int]) -> bytes:
    """A STOW-RS DICOM JSON answer: SOP Instance UID -> WarningReason / FailureReason (0: none)."""

    def items(uids: dict[str, int], reason_tag: str) -> list[dict[str, Any]]:
        return [{"00081155": {"vr": "UI", "Value": [uid]},
                 **({reason_tag: {"vr": "US", "Value": [code]}} if code else {})} for uid, code in uids.items()]

    return json.dumps({"00081199": {"vr": "SQ", "Value": items(stored, "00081196")},
                       "00081198": {"vr": "SQ", "Value": items(failed, "00081197")}}).encode()
