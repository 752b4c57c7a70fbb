"""Planted patient identifiers never reach the node's logs, at any level but DEBUG's UIDs.

The whole flow runs in a real ``segnode serve`` at DEBUG: receiving (and quarantining a
broken instance), completion, every pipeline step in the worker processes (whose stderr
is the node's, so their lines land in the same log), and the sending step to a real DCMTK
storescp. The four-series study is TCGA-FG-6692 written as DICOM with the planted
identifiers (tests/fixtures/dicom_study.py); a second study of real scanner files, its
patient attributes replaced with the same markers, fails at selecting, so a failure's
lines are checked too (the real data is anonymised already: the PHI is synthetic).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.dcmtk_peers import Storescp
from tests.fixtures.dicom_study import PatientTags, build_tcga_study, require_tcga_native
from tests.helpers import (
    FAST_NODE_TOML,
    NodeProcess,
    free_port,
    require_shared_data,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(600)]

PLANTED = {
    "PatientName": "PLANTEDNAME^ZZQX",
    "PatientID": "PLANTEDID4711",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "PLANTEDACC99",
}
#: The CPU pipeline (brain extraction, registration, the shipped model) on a shared machine.
JOBS_TIMEOUT_S = 500


def planted_scanner_files(tmp_path: Path) -> list[Path]:
    """Four real Siemens T1 slices (one series: selection fails) and one without a study UID."""
    sources = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())[:4]
    planted = []
    for index, path in enumerate(sources):
        dataset = pydicom.dcmread(path)
        for keyword, value in PLANTED.items():
            setattr(dataset, keyword, value)
        target = tmp_path / f"planted{index}.dcm"
        dataset.save_as(target)
        planted.append(target)
    broken = tmp_path / "planted_broken.dcm"
    dataset = pydicom.dcmread(sources[0])
    for keyword, value in PLANTED.items():
        setattr(dataset, keyword, value)
    del dataset.StudyInstanceUID
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
    dataset.save_as(broken)
    return [*planted, broken]


def finished_jobs(data_dir: Path, count: int) -> list[tuple[Any, ...]] | None:
    """(id, state, failed_step) of the node's jobs once there are ``count``, all ended."""
    try:
        with sqlite3.connect(data_dir / "segnode.db") as connection:
            rows = connection.execute("SELECT id, state, failed_step FROM jobs ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # the database is not created yet
        return None
    ended = len(rows) == count and all(state in {"done", "failed", "not_applicable", "cancelled"} for _, state, _ in rows)
    return rows if ended else None


def test_planted_phi_is_not_logged(tmp_path: Path, storescp: Callable[..., Storescp]) -> None:
    require_tcga_native()
    study = build_tcga_study(
        tmp_path / "study",
        PatientTags(
            patient_name=PLANTED["PatientName"],
            patient_id=PLANTED["PatientID"],
            patient_birth_date=PLANTED["PatientBirthDate"],
            accession_number=PLANTED["AccessionNumber"],
        ),
    )
    assert str(pydicom.dcmread(study["t1c"].files[0]).PatientName) == PLANTED["PatientName"]
    pacs = storescp()
    config = tmp_path / "node.toml"
    config.write_text(
        FAST_NODE_TOML
        + "[logging]\nlevel = 'DEBUG'\n[model]\ntta = false\n[jobs]\npoll_interval_s = 0.2\n"
        "[[delivery.destinations]]\n"
        f"name = 'pacs'\nae_title = 'DCMTK'\nhost = '127.0.0.1'\nport = {pacs.port}\n"
        "send = ['seg', 'sr']\n"
    )
    data_dir, log = tmp_path / "data", tmp_path / "node.log"
    node = NodeProcess(config, data_dir, free_port(), log).start()
    try:
        study_files = [path for series in study.values() for path in series.files]
        assert storescu(node.port, study_files).returncode == 0
        storescu(node.port, planted_scanner_files(tmp_path), extra=("-nh",))  # one is refused
        jobs = wait_for(lambda: finished_jobs(data_dir, 2), JOBS_TIMEOUT_S, "both jobs to end", interval_s=0.5)
    finally:
        node.stop()
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]

    # The flow ran: received, quarantined, completed, one job through every step and sent.
    assert "instance quarantined" in text and "association accepted" in text
    assert sorted((state, step) for _, state, step in jobs) == [("done", None), ("not_applicable", "selecting")]
    # The T1c's SEG, the SEGs on the moved FLAIR and T2, and the SR reached the destination.
    assert len(pacs.received()) == 4
    # The steps' lines (from the worker processes) and the sending step's are in this log,
    # each with its job and step (the brain extraction's from the convert step's thread).
    done_job = next(job_id for job_id, state, _ in jobs if state == "done")
    steps_seen = {
        line["step"]
        for line in lines
        if line.get("job_id") == done_job and line["logger"].startswith("segnode.pipeline.")
    }
    assert {"converting", "inferring", "writing"} <= steps_seen, steps_seen
    assert any(
        line["message"] == "delivered" and line.get("step") == "sending" and line.get("job_id") == done_job
        for line in lines
    )

    for value in PLANTED.values():
        assert value not in text, f"{value} leaked into the log"
    assert "ZZQX" not in text
