"""End to end against a real PACS: Orthanc sends a study, segnode sends SEG, SR and SC back.

The study is TCGA-FG-6692's four native series written as DICOM (tests/fixtures/dicom_study.py:
no public multi-sequence tumour DICOM study exists, so it is built from the real NIfTI). The
node runs as a real ``segnode serve`` process on CPU with the shipped reference model, so a
kill -9 is a real one. TTA is off to keep the suite fast; everything else is the default
pipeline. Where the tumour is, independently of our pipeline: the BraTS (SRI24-space) label of
the same patient, brought into the T1c's geometry by a rigid registration of the SRI24 T1c.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segnode.pipeline.conversion import convert_series
from segnode.pipeline.registration import register_rigid, resample_onto
from tests.fixtures.dicom_study import BuiltSeries
from tests.helpers import FAST_NODE_TOML, SHARED_DATA, NodeProcess, free_port, wait_for
from tests.orthanc import Orthanc

pytestmark = [pytest.mark.orthanc, pytest.mark.timeout(600)]

SRI24_CASE = SHARED_DATA / "nifti" / "TCGA-FG-6692_sri24_skullstripped"
#: The bar proves the mask is on the tumour, in the right geometry, through the node's own
#: skull stripping and registration of native scanner data (the default model's accuracy on
#: BraTS-preprocessed data is its cross-validation, docs/models.md). Measured 2026-12-02 with
#: segnode-brats22-v1: 0.48 (0.62 on the SRI24 copy of this patient, which none of its members saw;
#: it over-segments this small low-grade tumour). A geometry or orientation error scores near 0.
#: (segnode-reference-v1 scored 0.82 here, on the patient it was trained on.)
MIN_WT_DICE = 0.4
JOB_TIMEOUT_S = 400


def node_config(orthanc_port: int, *, backoff_s: float = 1.0) -> str:
    return FAST_NODE_TOML + f"""
[model]
tta = false
[delivery]
initial_backoff_s = {backoff_s}
max_backoff_s = {backoff_s * 2}
max_attempts = 100
[[delivery.destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc_port}
calling_ae = "SEGNODE"
send = ["seg", "sr", "sc"]
[jobs]
poll_interval_s = 0.2
initial_backoff_s = 1.0
# The tumour check below registers the job's own skull-stripped T1c: keep it after done.
keep_intermediates = true
"""


def job_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "segnode.db") as connection:
        return connection.execute(
            "SELECT id, state, failed_step, error, model_id, model_sha256 FROM jobs ORDER BY id"
        ).fetchall()


def job_events(data_dir: Path, job_id: int) -> list[str]:
    with sqlite3.connect(data_dir / "segnode.db") as connection:
        return [
            row[0]
            for row in connection.execute(
                "SELECT kind FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]


def wait_for_state(data_dir: Path, states: set[str], timeout_s: float = JOB_TIMEOUT_S) -> tuple[Any, ...]:
    def reached() -> tuple[Any, ...] | None:
        if not (data_dir / "segnode.db").exists():
            return None
        try:
            rows = job_rows(data_dir)
        except sqlite3.OperationalError:  # schema not created yet
            return None
        if rows and rows[-1][1] == "failed" and "failed" not in states:
            raise AssertionError(f"job failed: {rows[-1]}")
        return rows[-1] if rows and rows[-1][1] in states else None

    return wait_for(reached, timeout_s, f"a job in state {sorted(states)}", interval_s=0.05)


@dataclass
class Site:
    """Orthanc as the PACS and segnode beside it, wired both ways."""

    orthanc: Orthanc
    node: NodeProcess
    data_dir: Path
    orthanc_study: str

    def send_study(self) -> None:
        answer = self.orthanc.post(
            "/modalities/segnode/store", {"Resources": [self.orthanc_study], "Synchronous": True}
        )
        assert answer["FailedInstancesCount"] == 0

    def series_by_modality(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for series in self.orthanc.get(f"/studies/{self.orthanc_study}/series"):
            found.setdefault(series["MainDicomTags"]["Modality"], []).append(series)
        return found


@pytest.fixture
def site(tmp_path: Path, tcga_study: dict[str, BuiltSeries]) -> Iterator[Site]:
    node_port = free_port()
    orthanc = Orthanc(
        tmp_path / "orthanc", modalities={"segnode": ["SEGNODE", "127.0.0.1", node_port]}
    ).start()
    files = [path for series in tcga_study.values() for path in series.files]
    [orthanc_study] = orthanc.upload(files)
    config = tmp_path / "node.toml"
    config.write_text(node_config(orthanc.dicom_port))
    data_dir = tmp_path / "data"
    node = NodeProcess(config, data_dir, node_port, tmp_path / "node.log").start()
    try:
        yield Site(orthanc, node, data_dir, orthanc_study)
    finally:
        node.stop()
        orthanc.stop()


def silver_label_on(t1c_files: list[Path], brain_t1c: sitk.Image) -> np.ndarray:
    """The SRI24-space silver label (any tumour) in the T1c series' geometry, (z, row, col).

    Aligned as tests/pipeline/test_preprocessing.py does: the SRI24 T1c is the fixed image
    and our skull-stripped T1c (shifted positive inside the brain) moves; the label then
    goes the inverse way, onto the T1c source grid.
    """
    reference = sitk.ReadImage(str(SRI24_CASE / "t1c.nii.gz"), sitk.sitkFloat32)
    alignment = register_rigid(
        reference, brain_t1c, fixed_mask=sitk.Cast(reference > 0, sitk.sitkUInt8)
    )
    label = sitk.ReadImage(str(SRI24_CASE / "seg_fusion_mav_5algos.nii.gz"), sitk.sitkUInt8)
    source = convert_series(t1c_files).image
    on_source = resample_onto(
        label, source, alignment.transform.GetInverse(), sitk.sitkNearestNeighbor
    )
    return sitk.GetArrayFromImage(on_source) > 0


def preprocessed_t1c(data_dir: Path, job_id: int) -> sitk.Image:
    """The job's own skull-stripped T1c channel on its 1 mm grid (T1c physical space)."""
    work = data_dir / "jobs" / str(job_id) / "preprocessed"
    grid = sitk.ReadImage(str(work / "grid.mha"))
    with np.load(work / "channels.npz") as arrays:
        t1c = arrays["image"][1]  # CHANNEL_ORDER: t1, t1c, t2, flair
        positive = (t1c + 5) * arrays["brain_mask"]
    image = sitk.GetImageFromArray(np.ascontiguousarray(positive.transpose(2, 1, 0)).astype(np.float32))
    image.CopyInformation(grid)
    return image


def assert_results_in_pacs(site: Site, tcga_study: dict[str, BuiltSeries], job_id: int) -> None:
    found = site.series_by_modality()
    assert {"SEG", "SR", "MR"} <= set(found), found.keys()
    # The secondary capture overlay carries its source's modality (MR; OHIF plays "OT" as cine).
    descriptions = {series["MainDicomTags"].get("SeriesDescription") for series in found["MR"]}
    assert "segnode tumour SC - not for clinical use" in descriptions, descriptions
    # The T1c's SEG, and one on each series registration moved against it (~16 mm here).
    segs = {series["MainDicomTags"].get("SeriesDescription"): series for series in found["SEG"]}
    assert set(segs) == {f"segnode tumour SEG{on} - not for clinical use" for on in ("", " on FLAIR", " on T2")}
    seg_series = segs["segnode tumour SEG - not for clinical use"]
    [seg_instance] = seg_series["Instances"]  # one SEG: nothing was sent twice
    seg = hd.seg.segread(pydicom.filebase.DicomBytesIO(site.orthanc.get_bytes(f"/instances/{seg_instance}/file")))
    t1c = tcga_study["t1c"]
    assert seg.StudyInstanceUID == t1c.study_instance_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t1c.series_instance_uid
    t1c_uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in t1c.files]
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= set(t1c_uids)
    assert seg.SeriesDescription == "segnode tumour SEG - not for clinical use"

    # The SEG's frames in the T1c volume's slice order (along the normal, as converted).
    ordered = [ref.sop_instance_uid for ref in convert_series(t1c.files).slices]
    mask = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=ordered, combine_segments=True, skip_overlap_checks=True
    ) > 0
    silver = silver_label_on(t1c.files, preprocessed_t1c(site.data_dir, job_id))
    assert mask.shape == silver.shape
    dice = 2 * np.logical_and(mask, silver).sum() / (mask.sum() + silver.sum())
    print(f"WT Dice against the registered silver label: {dice:.3f} ({mask.sum()} vs {silver.sum()} voxels)")
    assert dice >= MIN_WT_DICE

    [sr_series] = found["SR"]
    [sr_instance] = sr_series["Instances"]
    sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(site.orthanc.get_bytes(f"/instances/{sr_instance}/file")))
    assert sr.StudyInstanceUID == t1c.study_instance_uid


def test_study_from_orthanc_comes_back_with_seg_sr_and_sc(site: Site, tcga_study: dict[str, BuiltSeries]) -> None:
    site.send_study()
    job_id, state, _, _, model_id, model_sha256 = wait_for_state(site.data_dir, {"done"})
    assert model_id == "segnode-brats22-v1" and len(model_sha256) == 64
    events = job_events(site.data_dir, job_id)
    for state_name in ("selecting", "converting", "preprocessing", "inferring", "writing", "sending", "delivered", "done"):
        assert state_name in events, events
    assert_results_in_pacs(site, tcga_study, job_id)


def test_pacs_down_during_delivery_gets_the_results_when_it_is_back(site: Site, tcga_study: dict[str, BuiltSeries]) -> None:
    site.send_study()
    site.orthanc.stop()  # the PACS goes down while segnode is still working on the study
    job_id = wait_for_state(site.data_dir, {"sending"})[0]
    wait_for(lambda: "delivery_retry" in job_events(site.data_dir, job_id) or None, 60, "a failed delivery attempt")
    assert job_rows(site.data_dir)[-1][1] == "sending"
    site.orthanc.start()
    wait_for_state(site.data_dir, {"done"})
    assert_results_in_pacs(site, tcga_study, job_id)


def test_node_killed_mid_inference_completes_after_restart(site: Site, tcga_study: dict[str, BuiltSeries]) -> None:
    site.send_study()
    job_id = wait_for_state(site.data_dir, {"inferring"})[0]
    site.node.kill9()
    assert job_rows(site.data_dir)[-1][1] == "inferring"
    site.node.start()
    wait_for_state(site.data_dir, {"done"})
    events = job_events(site.data_dir, job_id)
    assert events.count("preprocessing") == 1  # the finished steps did not run again
    assert_results_in_pacs(site, tcga_study, job_id)
