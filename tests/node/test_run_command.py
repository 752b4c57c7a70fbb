"""``segnode run``: a study folder in, valid DICOM results out, without network or database.

The real pipeline and the shipped reference model on TCGA-FG-6692's native series written as
DICOM (tests/fixtures/dicom_study.py); TTA off to keep it fast. The results the model really
produced must validate with dciodvfy and agree with each other (SR volumes = SEG voxels).
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from segnode.node.cli import app
from tests.fixtures.dicom_study import BuiltSeries
from tests.pipeline.outputs.dicom_checks import dciodvfy, unexpected_warnings

pytestmark = pytest.mark.timeout(600)


def test_run_writes_valid_seg_sr_sc_and_pdf_for_a_local_study(
    tmp_path: Path, tcga_study: dict[str, BuiltSeries]
) -> None:
    config = tmp_path / "site.toml"
    config.write_text("[model]\ntta = false\n")
    study_dir = tcga_study["t1"].folder.parent
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["run", str(study_dir), "--out", str(out), "--outputs", "seg,sr,sc,pdf",
         "--config", str(config), "--data-dir", str(tmp_path / "data"), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    kinds = sorted({entry["kind"] for entry in summary["objects"]})
    assert kinds == ["pdf", "sc", "seg", "sr"]
    for entry in summary["objects"]:
        validation = dciodvfy(Path(entry["path"]))
        assert validation.errors == [], (entry["kind"], validation.errors)
        assert unexpected_warnings(validation) == [], (entry["kind"], validation.warnings)

    # The T1c's SEG, and one on each series registration moved (TCGA-FG-6692: ~16 mm).
    segs = {e.get("source_role", "t1c"): Path(e["path"]) for e in summary["objects"] if e["kind"] == "seg"}
    assert sorted(segs) == ["flair", "t1c", "t2"]
    seg_path = segs["t1c"]
    seg = hd.seg.segread(seg_path)
    t1c_uids = [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in tcga_study["t1c"].files
    ]
    mask = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=t1c_uids, combine_segments=True, skip_overlap_checks=True
    )
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    voxel_ml = float(np.prod([float(v) for v in measures.PixelSpacing])) * float(measures.SliceThickness) / 1000
    assert summary["volumes_ml"]["WT"] == pytest.approx((mask > 0).sum() * voxel_ml, abs=1e-3)
    assert summary["volumes_ml"]["WT"] > 10  # the tumour was found (tens of ml in this patient)
    # TCGA-FG-6692's four series were not acquired in register (each has its own frame of
    # reference): the registration moves T2 and FLAIR by about 16 mm, and the reader is told.
    assert summary["review_recommended"] is True
    moved = {flag["role"] for flag in summary["quality_flags"] if flag["check"] == "motion"}
    assert {"t2", "flair"} <= moved
    quality = json.loads((Path(summary["work_dir"]) / "quality.json").read_text())
    assert 10 < quality["motion"]["t2"]["translation_mm"] < 25
    assert quality["tta"] is None  # TTA off: one pass, nothing to compare
    assert quality["measured"]["t1c_slice_spacing_mm"] == pytest.approx(5.5, abs=0.1)
