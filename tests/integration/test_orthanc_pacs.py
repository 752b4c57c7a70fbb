"""Orthanc plays the PACS: a study pushed from it through its REST API lands in the node."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from segnode.storage.models import Instance, Job, Study
from tests.helpers import require_shared_data, wait_for
from tests.integration.dicom_files import dataset_bytes, index_folder
from tests.orthanc import Orthanc

pytestmark = pytest.mark.orthanc


def test_study_sent_from_orthanc_is_stored_grouped_and_completed(start, tmp_path: Path) -> None:
    from tests.conftest import FAST_COMPLETION

    node = start(completion=FAST_COMPLETION)
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"segnode": ["SEGNODE", "127.0.0.1", node.scp.port]}).start()
    try:
        folder = require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS"
        [study_id] = orthanc.upload(sorted(folder.iterdir()))
        answer = orthanc.post("/modalities/segnode/store", {"Resources": [study_id], "Synchronous": True})
        assert answer["InstancesCount"] == 35 and answer["FailedInstancesCount"] == 0
        orthanc_files = {
            orthanc.get(f"/instances/{instance['ID']}/simplified-tags")["SOPInstanceUID"]:
                orthanc.get_bytes(f"/instances/{instance['ID']}/file")
            for instance in orthanc.get(f"/studies/{study_id}/instances")
        }
    finally:
        orthanc.stop()

    sources = index_folder(folder)
    with node.sessions() as session:
        rows = {row.sop_instance_uid: row for row in session.execute(select(Instance)).scalars()}
    assert set(rows) == set(sources)
    for sop_uid, row in rows.items():
        assert row.calling_ae == "ORTHANC" and row.called_ae == "SEGNODE"
        stored = node.store.absolute(row.file_path).read_bytes()
        assert dataset_bytes(stored) == dataset_bytes(orthanc_files[sop_uid])

    def completed() -> Study | None:
        with node.sessions() as session:
            study = session.execute(select(Study)).scalar_one()
            return study if study.state == "complete" else None

    study = wait_for(completed, 30, "the study to complete")
    assert study.received_instances == 35 and study.routing_rule == "brain-mr"
    with node.sessions() as session:
        job = session.execute(select(Job)).scalar_one()
    assert job.state == "received"
