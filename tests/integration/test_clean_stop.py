"""A clean stop with an association still open leaves no association row ``open``.

A real pynetdicom requestor associates, stores one instance and then holds the
association (no release) while the node stops.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pydicom
from pynetdicom import AE

from segnode.node.service import Node
from tests.helpers import require_shared_data, wait_for


def _rows(data_dir: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "segnode.db") as connection:
        return connection.execute(
            "SELECT outcome, ended_at IS NOT NULL, instances_stored FROM associations"
        ).fetchall()


def test_clean_stop_ends_the_row_of_an_association_held_open(start: Callable[..., Node]) -> None:
    source = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())[0]
    dataset = pydicom.dcmread(source)
    node = start()
    data_dir = node.settings.storage.data_dir

    ae = AE(ae_title="HOLDOPEN")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    association = ae.associate("127.0.0.1", node.scp.port, ae_title="SEGNODE")
    try:
        assert association.is_established
        status = association.send_c_store(dataset)
        assert status and status.Status == 0
        assert _rows(data_dir) == [("open", 0, 0)]  # held: neither released nor aborted

        node.stop()
        assert _rows(data_dir) in ([("interrupted", 1, 1)], [("aborted", 1, 1)])
        wait_for(lambda: not association.is_established or None, 10, "the peer to see the abort")
    finally:
        association.abort()
        ae.shutdown()
