"""Dice/HD95 per region against hand computations (SYNTHETIC cubes and spheres), the BraTS
empty-region rules, label conventions and evaluation on the REAL labels in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segnode.pipeline.errors import EvaluationError
from segnode.pipeline.model.labels import convert_labels, detect_convention, labels_to_regions
from segnode.pipeline.training.evaluation import (
    BRATS_EMPTY_HD95_MM,
    case_id,
    evaluate_pair,
    evaluate_paths,
)
from segnode.vocabulary import NESTED_REGION_KEYS, LabelConvention
from tests.helpers import SHARED_DATA, require_data

TCGA = SHARED_DATA / "nifti" / "TCGA-FG-6692_sri24_skullstripped"
TCGA_LABELS = TCGA / "seg_fusion_mav_5algos.nii.gz"
TOOLKIT_LABELS = SHARED_DATA / "nifti" / "brats-toolkit-preprocessed-case" / "seg_algorithm.nii.gz"


def _real(path: Path) -> np.ndarray:
    require_data(path)
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return np.asarray(image.dataobj)


def _cube(shape: tuple[int, int, int], start: tuple[int, int, int], side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


def _labels(
    wt: np.ndarray, tc: np.ndarray | None = None, et: np.ndarray | None = None
) -> np.ndarray:
    """A 2021-convention label map from nested masks."""
    labels = np.where(wt, 2, 0).astype(np.uint8)
    if tc is not None:
        labels[tc] = 1
    if et is not None:
        labels[et] = 4
    return labels


def _scipy_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Independent HD95: boundary voxels (mask minus its erosion), exact Euclidean distance
    transform to the other boundary, the larger of the two directed 95th percentiles."""
    edge_a = a & ~ndimage.binary_erosion(a)
    edge_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~edge_b, sampling=spacing)[edge_a]
    to_a = ndimage.distance_transform_edt(~edge_a, sampling=spacing)[edge_b]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))


def test_two_cubes_offset_by_three_voxels() -> None:
    """10^3 cubes, one shifted 3 voxels along x, x spacing 2 mm (SYNTHETIC).

    Dice = 2 * 700 / 2000 = 0.7. HD95: the far face (100 of the 488 boundary voxels, over
    5 %) lies 3 voxels = 6 mm from the other cube's face and nothing lies farther, so the
    95th percentile is 6 mm in both directions.
    """
    shape = (40, 32, 32)
    reference = _labels(_cube(shape, (10, 10, 10), 10))
    prediction = _labels(_cube(shape, (13, 10, 10), 10))
    scores = evaluate_pair(prediction, reference, spacing_mm=(2.0, 1.0, 1.0))
    assert scores["wt"]["dice"] == pytest.approx(0.7)
    assert scores["wt"]["hd95"] == pytest.approx(6.0)
    # No TC or ET in either map: BraTS scores both-empty as perfect.
    assert scores["tc"] == {"dice": 1.0, "hd95": 0.0}
    assert scores["et"] == {"dice": 1.0, "hd95": 0.0}


def test_hd95_matches_an_independent_distance_transform() -> None:
    """A sphere against an offset ellipsoid on an anisotropic grid (SYNTHETIC)."""
    grid = np.indices((48, 40, 24)).astype(float)
    sphere = ((grid[0] - 22) ** 2 + (grid[1] - 20) ** 2 + ((grid[2] - 12) * 2) ** 2) < 12**2
    ellipsoid = (
        ((grid[0] - 25) / 14) ** 2 + ((grid[1] - 19) / 10) ** 2 + ((grid[2] - 11) / 5) ** 2
    ) < 1
    spacing = (0.9, 0.9, 2.0)
    scores = evaluate_pair(_labels(ellipsoid), _labels(sphere), spacing_mm=spacing)
    expected_dice = 2 * (sphere & ellipsoid).sum() / (sphere.sum() + ellipsoid.sum())
    assert scores["wt"]["dice"] == pytest.approx(expected_dice, abs=1e-6)
    assert scores["wt"]["hd95"] == pytest.approx(_scipy_hd95(ellipsoid, sphere, spacing), abs=1e-4)
    assert 0 < scores["wt"]["hd95"] < 20


def test_one_empty_region_scores_dice_0_and_hd95_373() -> None:
    shape = (24, 24, 24)
    wt = _cube(shape, (4, 4, 4), 12)
    tc = _cube(shape, (6, 6, 6), 6)
    et = _cube(shape, (7, 7, 7), 3)
    with_et, without_et = _labels(wt, tc, et), _labels(wt, tc)
    for prediction, reference in ((with_et, without_et), (without_et, with_et)):
        scores = evaluate_pair(prediction, reference, spacing_mm=(1.0, 1.0, 1.0))
        assert scores["et"] == {"dice": 0.0, "hd95": BRATS_EMPTY_HD95_MM}
        assert scores["wt"] == {"dice": 1.0, "hd95": 0.0}
    assert round(BRATS_EMPTY_HD95_MM, 2) == 373.13
    assert BRATS_EMPTY_HD95_MM == pytest.approx(np.sqrt(240**2 + 240**2 + 155**2), abs=1e-4)
    empty = np.zeros(shape, np.uint8)
    assert evaluate_pair(empty, empty, (1.0, 1.0, 1.0)) == {
        region: {"dice": 1.0, "hd95": 0.0} for region in NESTED_REGION_KEYS
    }


def test_each_input_keeps_its_own_label_convention() -> None:
    shape = (24, 24, 24)
    labels = _labels(
        _cube(shape, (4, 4, 4), 12), _cube(shape, (6, 6, 6), 6), _cube(shape, (7, 7, 7), 3)
    )
    as_2023 = convert_labels(labels, LabelConvention.BRATS_2023)
    assert set(np.unique(as_2023).tolist()) == {0, 1, 2, 3}
    for scores in (
        evaluate_pair(as_2023, labels, (1, 1, 1)),
        evaluate_pair(labels, as_2023, (1, 1, 1)),
    ):
        assert all(scores[region] == {"dice": 1.0, "hd95": 0.0} for region in NESTED_REGION_KEYS)


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(EvaluationError, match="same grid"):
        evaluate_pair(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), (1, 1, 1))
    with pytest.raises(EvaluationError, match="spacing"):
        evaluate_pair(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), (1, 1))
    with pytest.raises(EvaluationError, match="not a BraTS label map"):
        evaluate_pair(np.full((4, 4, 4), 7, np.uint8), np.zeros((4, 4, 4), np.uint8), (1, 1, 1))


def test_case_ids_drop_extensions_and_label_suffixes() -> None:
    assert case_id(Path("BraTS2021_00000_seg.nii.gz")) == "BraTS2021_00000"
    assert case_id(Path("BraTS-GLI-00001-000-seg.nii.gz")) == "BraTS-GLI-00001-000"
    assert case_id(Path("BraTS2021_00000.nii")) == "BraTS2021_00000"
    assert case_id(Path("case7_pred.nii.gz")) == "case7"


def _save(labels: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, np.eye(4) if affine is None else affine), path)
    return path


def test_folders_are_paired_by_case_id(tmp_path: Path) -> None:
    """SYNTHETIC label files in both layouts (flat files, and BraTS case sub-folders)."""
    shape = (24, 24, 24)
    reference = _labels(_cube(shape, (4, 4, 4), 10))
    shifted = _labels(_cube(shape, (5, 4, 4), 10))
    predictions, labels = tmp_path / "pred", tmp_path / "labels"
    _save(reference, predictions / "caseA.nii.gz")
    _save(shifted, predictions / "caseB.nii.gz")
    _save(reference, predictions / "caseC.nii.gz")
    _save(reference, labels / "caseA_seg.nii.gz")
    _save(reference, labels / "caseB" / "caseB-seg.nii.gz")
    _save(reference.astype(np.int16), labels / "caseB" / "caseB-t1n.nii.gz")  # an image, not labels
    _save(reference, labels / "caseD_seg.nii.gz")

    report = evaluate_paths(predictions, labels)

    assert list(report.cases) == ["caseA", "caseB"]
    assert report.cases["caseA"]["wt"] == {"dice": 1.0, "hd95": 0.0}
    assert report.cases["caseB"]["wt"]["dice"] == pytest.approx(0.9)
    assert report.mean["wt"]["dice"] == pytest.approx(0.95)
    assert report.unmatched_predictions == ("caseC",) and report.unmatched_labels == ("caseD",)
    table = report.format_table()
    assert "caseB" in table and "mean" in table and "caseD" in table
    parsed = json.loads(report.to_json())
    assert parsed["mean"]["wt"]["dice"] == pytest.approx(0.95)


def test_paths_on_different_grids_or_of_mixed_kinds_are_refused(tmp_path: Path) -> None:
    labels = _labels(_cube((16, 16, 16), (4, 4, 4), 6))
    shifted_grid = np.eye(4)
    shifted_grid[0, 3] = 5.0
    a = _save(labels, tmp_path / "a.nii.gz")
    b = _save(labels, tmp_path / "b.nii.gz", affine=shifted_grid)
    with pytest.raises(EvaluationError, match="same grid"):
        evaluate_paths(a, b)
    with pytest.raises(EvaluationError, match="two folders"):
        evaluate_paths(a, tmp_path)
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_paths(tmp_path / "missing.nii.gz", a)


# --- REAL labels from ../shared/data -------------------------------------------------------


def test_real_2021_labels_convert_to_2023_and_back() -> None:
    labels = _real(TCGA_LABELS)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 4}
    assert detect_convention(labels) is LabelConvention.BRATS_2021
    as_2023 = convert_labels(labels, LabelConvention.BRATS_2023)
    assert set(np.unique(as_2023).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(convert_labels(as_2023, LabelConvention.BRATS_2021), labels)
    counts = {value: int((labels == value).sum()) for value in (1, 2, 4)}
    expected = [counts[1] + counts[2] + counts[4], counts[1] + counts[4], counts[4]]
    assert labels_to_regions(labels).sum(axis=(1, 2, 3)).tolist() == expected
    assert labels_to_regions(as_2023).sum(axis=(1, 2, 3)).tolist() == expected


def test_real_2023_labels_convert_to_2021_and_back() -> None:
    labels = _real(TOOLKIT_LABELS)
    assert detect_convention(labels) is LabelConvention.BRATS_2023
    as_2021 = convert_labels(labels, LabelConvention.BRATS_2021)
    assert set(np.unique(as_2021).tolist()) == {0, 1, 2, 4}
    np.testing.assert_array_equal(convert_labels(as_2021, LabelConvention.BRATS_2023), labels)
    np.testing.assert_array_equal(labels_to_regions(labels), labels_to_regions(as_2021))


def test_real_label_against_itself_is_perfect() -> None:
    _real(TCGA_LABELS)
    report = evaluate_paths(TCGA_LABELS, TCGA_LABELS)
    scores = report.cases["seg_fusion_mav_5algos"]
    assert all(scores[region] == {"dice": 1.0, "hd95": 0.0} for region in NESTED_REGION_KEYS)


def test_real_label_against_one_algorithm_is_plausible() -> None:
    """The 5-algorithm majority vote against one of its inputs: close, not identical."""
    algorithm = TCGA / "algo_segs" / "hnfnetv1-20.nii.gz"
    fused, single = _real(TCGA_LABELS), _real(algorithm)
    scores = evaluate_paths(algorithm, TCGA_LABELS).cases["hnfnetv1-20"]
    assert 0.7 < scores["wt"]["dice"] < 1.0
    assert all(0.5 < scores[region]["dice"] < 1.0 for region in NESTED_REGION_KEYS)
    assert all(0.0 < scores[region]["hd95"] < 50.0 for region in NESTED_REGION_KEYS)
    ours, theirs = labels_to_regions(single)[0], labels_to_regions(fused)[0]
    overlap = 2 * (ours & theirs).sum() / (ours.sum() + theirs.sum())
    assert scores["wt"]["dice"] == pytest.approx(overlap)
    # The tumour lies well inside the grid: a crop with a margin leaves the distances alone.
    box = tuple(
        slice(part.start - 3, part.stop + 3)
        for part in ndimage.find_objects((ours | theirs).astype(np.uint8))[0]
    )
    hd95 = _scipy_hd95(ours[box], theirs[box], (1.0, 1.0, 1.0))
    assert scores["wt"]["hd95"] == pytest.approx(hd95, abs=1e-3)
