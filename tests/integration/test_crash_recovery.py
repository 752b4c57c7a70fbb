"""kill -9 in the middle of an association, restart: nothing acknowledged is lost.

The node runs as a real subprocess (``python -m segnode.node.cli serve``) and pynetdicom
sends a real 170-instance series one C-STORE at a time, recording exactly which
instances got Success before the kill.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from tests.helpers import FAST_NODE_TOML, NodeProcess, free_port, require_shared_data, wait_for


def query(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "segnode.db") as connection:
        return connection.execute(sql).fetchall()


def test_kill9_mid_association_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    folder = require_shared_data() / "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic"
    files = sorted(folder.iterdir())
    config = tmp_path / "node.toml"
    config.write_text(FAST_NODE_TOML)
    data_dir, port = tmp_path / "data", free_port()
    node = NodeProcess(config, data_dir, port, tmp_path / "node.log").start()

    acknowledged: list[str] = []
    reached_kill_point = threading.Event()

    def send() -> None:
        ae = AE(ae_title="CRASHSCU")
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        association = ae.associate("127.0.0.1", port, ae_title="SEGNODE")
        assert association.is_established
        for path in files:
            try:
                status = association.send_c_store(path)
            except (RuntimeError, OSError):
                break
            if not status or status.Status != 0:
                break
            acknowledged.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
            if len(acknowledged) == 60:
                reached_kill_point.set()
        reached_kill_point.set()
        association.abort()

    sender = threading.Thread(target=send)
    sender.start()
    assert reached_kill_point.wait(120)
    node.kill9()
    sender.join(30)
    assert 60 <= len(acknowledged) < len(files), "the kill must land mid-association"

    node.start()  # same data dir and port
    try:
        stored = dict(query(data_dir, "SELECT sop_instance_uid, file_path FROM instances"))
        sha = dict(query(data_dir, "SELECT sop_instance_uid, sha256 FROM instances"))
        for sop_uid in acknowledged:
            assert sop_uid in stored, f"acknowledged instance {sop_uid} lost"
            on_disk = (data_dir / "store" / stored[sop_uid]).read_bytes()
            assert hashlib.sha256(on_disk).hexdigest() == sha[sop_uid]
        assert list((data_dir / "tmp").iterdir()) == []
        assert query(data_dir, "SELECT outcome FROM associations") == [("interrupted",)]

        def fired() -> bool:
            return bool(query(data_dir, "SELECT id FROM jobs"))

        wait_for(fired, 30, "the study to complete after the restart")
        [(state, reason)] = query(data_dir, "SELECT state, state_reason FROM studies")
        assert state == "complete"
        assert "association release hint" in reason or "quiet" in reason
    finally:
        node.stop()
