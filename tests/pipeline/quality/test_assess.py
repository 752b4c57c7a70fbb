"""The quality checks: each from the figures an earlier step recorded, and all from a job folder.

The job folders here are SYNTHETIC (headers as test_selection builds them, small blank volumes
with a chosen spacing and size, registration records written by ``RigidResult.as_record`` from
transforms with a known motion): each check's limit is crossed on purpose, which real cases
cannot do on demand. The checks on a real study run in the end-to-end tests
(tests/node/test_run_command.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import SimpleITK as sitk

from segnode.config.quality import QualitySettings
from segnode.config.settings import SelectionSettings
from segnode.pipeline.quality.assess import (
    assess,
    brain_flags,
    geometry_flags,
    motion_flags,
    note_own_segmentations,
    selection_flags,
    series_motion,
    tta_flags,
)
from segnode.pipeline.quality.record import QaCheck, QualityReport, TtaAgreement
from segnode.pipeline.registration import RigidResult
from segnode.pipeline.selection import identify_sequences, stand_ins
from segnode.pipeline.steps.select import selection_of
from segnode.pipeline.workspace import (
    InferenceRecord,
    ModelIdentity,
    Selection,
    Workspace,
)
from segnode.vocabulary import LabelConvention, Region, Role
from tests.pipeline.test_selection import BRAIN_STUDY, series

LIMITS = QualitySettings()
SELECTION = SelectionSettings()


def _registration(angle_deg: float, translation: tuple[float, float, float]) -> dict[str, object]:
    """A registration record with a known motion: a rotation about z, then a translation."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter((10.0, -20.0, 30.0))
    transform.SetRotation(0.0, 0.0, math.radians(angle_deg))
    transform.SetTranslation(translation)
    return RigidResult(transform, metric_before=-0.2, metric_after=-0.5, iterations=30, seconds=1.0).as_record()


def _selection(study: list, settings: SelectionSettings = SELECTION) -> Selection:  # noqa: ANN001
    """As the select step makes it (files left out: the checks read none)."""
    assignment = identify_sequences(study, settings)
    substitutes = stand_ins(assignment, settings.stand_in_for)
    return selection_of(assignment, substitutes, {facts.series_instance_uid: () for facts in study})


def test_motion_is_the_translation_at_the_centre_and_the_rotation_angle() -> None:
    record = {"registration": {"t2": _registration(3.0, (3.0, 4.0, 0.0)), "flair": _registration(0.0, (0.0, 0.0, 0.5))}}
    motion = series_motion(record)
    assert motion[Role.T2].translation_mm == pytest.approx(5.0)
    assert motion[Role.T2].rotation_deg == pytest.approx(3.0)
    assert (motion[Role.FLAIR].translation_mm, motion[Role.FLAIR].rotation_deg) == pytest.approx((0.5, 0.0))
    flags = motion_flags(motion, LIMITS)
    assert [(f.check, f.role) for f in flags] == [(QaCheck.MOTION, Role.T2)]
    assert flags[0].summary == "T2 is 5.0 mm / 3.0° from the T1c (limit 2 mm / 2°); the T1c's overlay is off on it"
    report = QualityReport(flags=tuple(flags), checked=(QaCheck.MOTION,))
    noted = note_own_segmentations(report, [Role.T2])
    assert noted.flags[0].summary.endswith("(limit 2 mm / 2°); use the SEG on the T2 itself")
    assert note_own_segmentations(report, [Role.FLAIR]) == report


def test_a_rotation_alone_beyond_its_limit_is_motion() -> None:
    motion = series_motion({"registration": {"t1": _registration(2.5, (0.0, 0.0, 0.0))}})
    assert [f.role for f in motion_flags(motion, LIMITS)] == [Role.T1]
    assert motion_flags(motion, QualitySettings(max_rotation_deg=3.0)) == []


def test_a_typical_study_raises_no_selection_flag() -> None:
    assert selection_flags(_selection(BRAIN_STUDY)) == []


def test_a_missing_t1_is_stood_in_for_by_the_t1c_and_flagged() -> None:
    without_t1 = [s for s in BRAIN_STUDY if s.series_instance_uid != "2"]
    selection = _selection(without_t1)
    assert selection.substitutes == {Role.T1: Role.T1C}
    assert selection.roles[Role.T1].series_instance_uid == selection.roles[Role.T1C].series_instance_uid == "6"
    [flag] = selection_flags(selection)
    assert (flag.check, flag.role) == (QaCheck.MISSING_SEQUENCE, Role.T1)
    assert flag.summary == "no T1 series in the study; the T1c stood in for it"


def test_without_a_substitutes_table_nothing_stands_in() -> None:
    without_t1 = [s for s in BRAIN_STUDY if s.series_instance_uid != "2"]
    assert _selection(without_t1, SelectionSettings(substitutes=())).substitutes == {}


def test_words_only_and_a_t1c_by_acquisition_order_are_flagged() -> None:
    study = [
        series("t1", "T1 pre", tr=500, te=10, time="100000"),
        series("t1c", "t1_se_late", tr=500, te=10, time="101500"),  # no tag, no words: order only
        series("marker", "T1 +C", tr=500, te=10, time="101000"),
        series("t2", "t2_tse", tr=None, te=None, time="100100"),  # no TR/TE: words only
        series("flair", "FLAIR", tr=9000, te=120, ti=2500, scanning="SE\\IR", time="100200"),
    ]
    flags = {(f.check, f.role) for f in selection_flags(_selection(study))}
    assert (QaCheck.WEAK_IDENTIFICATION, Role.T2) in flags
    assert (QaCheck.WEAK_IDENTIFICATION, Role.FLAIR) not in flags
    # "marker" (T1 +C) shows contrast by its words; "t1c", acquired after it, is post-contrast by
    # order alone, and is chosen (equal score, the later acquisition wins).
    assert _selection(study).roles[Role.T1C].series_instance_uid == "t1c"
    assert (QaCheck.CONTRAST_MISSING, Role.T1C) in flags


def test_slices_too_far_apart_and_a_partial_field_of_view_are_flagged() -> None:
    geometry = {
        Role.T1C: ((0.9, 0.9, 5.5), (256, 224, 26)),  # TCGA-FG-6692's T1c: in range
        Role.T2: ((0.9, 0.9, 7.0), (256, 224, 20)),  # thick slices
        Role.FLAIR: ((0.9, 0.9, 5.0), (256, 224, 12)),  # covers 60 mm only
    }
    flags, measured = geometry_flags(geometry, LIMITS)
    assert [(f.check, f.role) for f in flags] == [
        (QaCheck.SLICE_THICKNESS, Role.T2),
        (QaCheck.FIELD_OF_VIEW, Role.FLAIR),
    ]
    assert measured["t1c_slice_spacing_mm"] == 5.5 and measured["flair_min_extent_mm"] == 60.0
    assert "FLAIR covers 230 x 202 x 60 mm" in flags[1].summary


def test_a_brain_volume_outside_adult_brains_is_flagged() -> None:
    assert brain_flags(1350.0, LIMITS) == []
    [flag] = brain_flags(240.0, LIMITS)
    assert flag.check is QaCheck.NOT_A_BRAIN and "240 ml" in flag.summary


def test_tta_disagreement_names_the_regions_beyond_the_limits_and_skips_tiny_ones() -> None:
    agreement = TtaAgreement(
        passes=8,
        volume_ml={Region.WT: (30.0, 31.0), Region.TC: (6.0, 10.0), Region.ET: (0.1, 0.6)},
        disagreement={Region.WT: 0.05, Region.TC: 0.2, Region.ET: 0.9},
        mean_std={Region.WT: 0.02, Region.TC: 0.1, Region.ET: 0.3},
    )
    [flag] = tta_flags(agreement, LIMITS)
    assert flag.summary == "8 passes disagree: TC 6.0-10.0 ml, 20% of voxels disputed"
    calm = agreement.model_copy(update={"volume_ml": {Region.WT: (30.0, 31.0)}})
    assert tta_flags(calm, LIMITS) == []


def _job_folder(tmp_path: Path, study: list, *, brain_ml: float, t2_shift_mm: float) -> Workspace:  # noqa: ANN001
    workspace = Workspace(tmp_path)
    selection = _selection(study)
    workspace.write_selection(selection)
    for role in selection.roles:
        image = sitk.Image(64, 56, 26, sitk.sitkInt16)
        image.SetSpacing((3.6, 3.6, 5.5))  # 230 x 202 x 143 mm, like TCGA-FG-6692
        path = workspace.volume_path(role)
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))
    workspace.write_preprocessing_record(
        {
            "registration": {
                "t1": _registration(0.2, (0.3, 0.0, 0.0)),
                "t2": _registration(0.5, (0.0, t2_shift_mm, 0.0)),
                "flair": _registration(0.1, (0.0, 0.0, 0.4)),
            },
            "brain_volume_ml": brain_ml,
        }
    )
    workspace.write_inference(
        InferenceRecord(
            models=(ModelIdentity(id="m", version="1", sha256="0" * 64),),
            label_convention=LabelConvention.BRATS_2021,
            grid_label_voxels={0: 1},
            postprocessing={},
            device="cpu",
            tta=False,
        )
    )
    return workspace


def test_a_clean_job_folder_gives_a_report_without_flags(tmp_path: Path) -> None:
    report = assess(_job_folder(tmp_path, BRAIN_STUDY, brain_ml=1300.0, t2_shift_mm=0.8), LIMITS)
    assert report.flags == () and not report.review_recommended
    assert QaCheck.TTA_DISAGREEMENT not in report.checked  # TTA off: nothing to compare
    assert report.headline == f"No quality flag raised ({len(report.checked)} checks)"
    assert QualityReport(checked=(QaCheck.MOTION,)).headline == "No quality flag raised (1 check)"
    assert report.motion[Role.T2].translation_mm == pytest.approx(0.8)
    assert report.measured["brain_volume_ml"] == 1300.0


def test_a_job_folder_with_motion_and_a_missing_t1_recommends_review(tmp_path: Path) -> None:
    without_t1 = [s for s in BRAIN_STUDY if s.series_instance_uid != "2"]
    workspace = _job_folder(tmp_path, without_t1, brain_ml=1300.0, t2_shift_mm=16.0)
    report = assess(workspace, LIMITS)
    assert {(f.check, f.role) for f in report.flags} == {
        (QaCheck.MISSING_SEQUENCE, Role.T1),
        (QaCheck.MOTION, Role.T2),
    }
    assert Role.T1 not in report.motion  # the T1c, standing in, did not move against itself
    assert report.review_recommended and report.lines()[0] == "REVIEW RECOMMENDED: 2 quality flags"
    workspace.write_quality(report)
    assert workspace.read_quality() == report
    assert QualityReport.model_validate_json(workspace.quality_path.read_text()) == report
