"""Start-up reconciliation: orphan files kept in quarantine, missing files reported, one query.

The orphan is what a kill between the file write and the row's commit leaves
behind: the receiver's own atomic write under ``store/``, and no row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE
from sqlalchemy import event

from segnode.config.settings import Settings
from segnode.node.service import Node, open_storage
from segnode.storage.filestore import FileStore
from segnode.storage.instances import InstanceRecord, record_instances
from segnode.storage.reconcile import NO_RESPONSE_STATUS, ORPHAN_REASON, reconcile_storage
from tests.helpers import require_shared_data
from tests.storage.records import instance_record


def _query(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "segnode.db") as connection:
        return connection.execute(sql).fetchall()


def _send(port: int, paths: list[Path]) -> None:
    datasets = [pydicom.dcmread(path) for path in paths]
    ae = AE(ae_title="RECONCILE")
    for dataset in datasets:
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    association = ae.associate("127.0.0.1", port, ae_title="SEGNODE")
    assert association.is_established
    for dataset in datasets:
        status = association.send_c_store(dataset)
        assert status and status.Status == 0
    association.release()
    ae.shutdown()


def test_restart_quarantines_orphans_and_reports_missing_files(
    start: Callable[..., Node], make_settings: Callable[..., Settings]
) -> None:
    files = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())
    settings = make_settings()
    data_dir = settings.storage.data_dir
    node = start(settings)
    _send(node.scp.port, files[:2])
    node.stop()

    [(kept_path,), (lost_path,)] = _query(data_dir, "SELECT file_path FROM instances ORDER BY id")
    (data_dir / "store" / lost_path).unlink()  # a row whose file has gone
    # Written exactly as the receiver writes, then "killed" before the row.
    orphan = pydicom.dcmread(files[2], stop_before_pixels=True)
    orphan_bytes = files[2].read_bytes()
    store = FileStore(data_dir)
    orphan_relative = store.instance_path(
        orphan.StudyInstanceUID, "1.2.826.0.1.3680043.8.498.1", orphan.SOPInstanceUID
    )
    store.write_instance(orphan_relative, orphan_bytes)

    start(settings).stop()

    assert not store.absolute(orphan_relative).exists()
    assert not store.absolute(orphan_relative).parent.exists()  # its empty series folder too
    [(reason, status, quarantined, sop_uid)] = _query(
        data_dir, "SELECT reason, status_code, file_path, sop_instance_uid FROM quarantine"
    )
    assert (reason, status, sop_uid) == (ORPHAN_REASON, NO_RESPONSE_STATUS, orphan.SOPInstanceUID)
    assert (data_dir / "quarantine" / quarantined).read_bytes() == orphan_bytes
    note = json.loads((data_dir / "quarantine" / quarantined).with_suffix(".json").read_text())
    assert note["reason"] == ORPHAN_REASON
    assert note["store_path"] == str(orphan_relative)

    # Rows are never deleted; the missing file is on record.
    assert _query(data_dir, "SELECT count(*) FROM instances") == [(2,)]
    assert (data_dir / "store" / kept_path).exists()
    events = dict(_query(data_dir, "SELECT kind, detail FROM node_events"))
    assert json.loads(events["instance_files_missing"]) == {"count": 1, "file_paths": [lost_path]}
    recovery = json.loads(events["restart_recovery"])
    assert recovery["orphans_quarantined"] == 1
    assert recovery["missing_files"] == 1


def _record(index: int) -> InstanceRecord:
    study, series, sop = "1.2.3", f"1.2.3.{index // 500}", f"1.2.3.4.{index}"
    return replace(
        instance_record(sop, series, study),
        series_number=index // 500,
        series_description="t1",
        attributes={},
        size_bytes=4,
    )


def test_large_store_is_reconciled_with_one_walk_and_one_query(
    make_settings: Callable[..., Settings],
) -> None:
    engine, sessions, store = open_storage(make_settings(storage={"fsync": False}))
    records = [_record(index) for index in range(3000)]
    with sessions.begin() as session:
        record_instances(session, records)
    for record in records:
        store.write_instance(Path(record.file_path), b"DICM")
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    began = time.monotonic()
    report = reconcile_storage(store, sessions)
    elapsed_s = time.monotonic() - began

    assert (report.orphans_quarantined, report.missing_files) == (0, 0)
    assert sum("FROM instances" in sql for sql in statements) == 1
    assert elapsed_s < 5, f"3000 files took {elapsed_s:.1f} s"
    engine.dispose()
