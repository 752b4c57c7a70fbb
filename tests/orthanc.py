"""Orthanc (Debian package) as the hospital PACS, driven through its REST API.

``dicomweb=True`` loads the Debian orthanc-dicomweb plugin (1.7), which serves
DICOMweb (QIDO/WADO/STOW-RS) under ``/dicom-web/`` on the HTTP port.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import dcmtk_env, free_port, require_tool, wait_for


class Orthanc:
    """A private Orthanc: its own storage, loopback peers only, no remote HTTP access."""

    def __init__(self, workdir: Path, ae_title: str = "ORTHANC", modalities: dict[str, list[Any]] | None = None,
                 dicomweb: bool = False) -> None:
        self.workdir = workdir
        self.dicomweb = dicomweb
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.modalities = modalities or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        binary = require_tool("Orthanc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "segnode-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            # Orthanc 1.10 cannot bind to loopback only; refusing remote HTTP access
            # and unknown DICOM peers keeps it private on this machine.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": True,
            "DicomModalities": self.modalities,
            "Plugins": [],
            "StableAge": 2,
        }
        if self.dicomweb:
            config["Plugins"] = [require_dicomweb_plugin()]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = (self.workdir / "orthanc.log").open("ab")
        self.process = subprocess.Popen([binary, str(config_path)], env=dcmtk_env(), stdout=log, stderr=log)
        wait_for(self._alive, 30, "Orthanc's REST API")
        return self

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            return bytes(response.read())

    def post(self, path: str, body: bytes | dict[str, Any], timeout_s: float = 120) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path), data=data, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read()
        return json.loads(text) if text else None

    def put(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.url(path), data=json.dumps(body).encode(), method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def delete(self, path: str) -> None:
        request = urllib.request.Request(self.url(path), method="DELETE")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def clear(self) -> None:
        """Delete every stored instance (keeps the configuration, e.g. modalities added by PUT)."""
        for patient in self.get("/patients"):
            self.delete(f"/patients/{patient}")

    @property
    def stow_url(self) -> str:
        """The DICOMweb studies endpoint (STOW-RS target); needs ``dicomweb=True``."""
        return self.url("/dicom-web/studies")

    def instance_file(self, sop_instance_uid: str) -> bytes | None:
        """The stored file of the instance with this SOP Instance UID, or None."""
        matches = [match for match in self.post("/tools/lookup", sop_instance_uid.encode())
                   if match["Type"] == "Instance"]
        return self.get_bytes(f"/instances/{matches[0]['ID']}/file") if matches else None

    def upload(self, paths: list[Path]) -> set[str]:
        """POST each file to /instances; returns the Orthanc study ids."""
        return {self.post("/instances", path.read_bytes())["ParentStudy"] for path in paths}

    def stop(self) -> None:
        """Stop the server; ``start()`` brings it back on the same ports with the same storage."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


    def kill(self) -> None:
        """SIGKILL, as a crashed PACS; ``start()`` brings it back (a clean stop takes ~3.5 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)


def require_dicomweb_plugin() -> str:
    for candidate in (Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
                      *sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))):
        if candidate.is_file():
            return str(candidate)
    pytest.skip("TOOL MISSING: the orthanc-dicomweb plugin is not installed; `scripts/test` installs it "
                "(apt-get install orthanc-dicomweb)")
