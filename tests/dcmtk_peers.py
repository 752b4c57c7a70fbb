"""DCMTK storescp as a delivery destination (shared by the delivery tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from segnode.config.destinations import DimseDestination
from tests.helpers import dcmtk_env, free_port, require_tool, wait_for_port


class Storescp:
    """DCMTK storescp, AE title DCMTK, one process (stopping it ends any association in progress)."""

    def __init__(self, folder: Path, *options: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = subprocess.Popen(
            [require_tool("storescp"), "-aet", "DCMTK", "-od", str(folder), *options, str(self.port)],
            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def destination(self, **changes: object) -> DimseDestination:
        values: dict[str, object] = {"name": "dcmtk", "ae_title": "DCMTK", "host": "127.0.0.1", "port": self.port,
                                     "calling_ae": "SEGNODE", "timeout_s": 5}
        return DimseDestination.model_validate({**values, **changes})

    def received(self) -> dict[str, bytes]:
        """SOP Instance UID -> file bytes (storescp names files <modality>.<SOP Instance UID>)."""
        return {path.name.split(".", 1)[1]: path.read_bytes() for path in self.folder.iterdir()}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
