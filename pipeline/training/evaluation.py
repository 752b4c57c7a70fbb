"""Dice and HD95 per tumour region, scored the way BraTS scores them.

Regions are the nested WT, TC and ET (``labels_to_regions``); each input's label convention
(ET = 4 or ET = 3) is detected on its own, so a 2023-convention prediction can be scored against
2021-convention labels. Dice and HD95 come from MONAI (``compute_dice``,
``compute_hausdorff_distance`` with percentile 95 and the voxel spacing in mm). MONAI's HD95 is
the larger of the two directed 95th percentiles of distances between the boundary voxels of the
two masks; other tools differ in the details (Podobnik & Vrtovec 2024, arXiv:2410.02630), so
compare HD95 only between results from the same tool.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import nibabel as nib
import numpy as np
import torch
from monai.metrics.hausdorff_distance import compute_hausdorff_distance
from monai.metrics.meandice import compute_dice
from nibabel.filebasedimages import ImageFileError
from scipy import ndimage

from segnode.pipeline.errors import EvaluationError
from segnode.pipeline.model.labels import labels_to_regions
from segnode.vocabulary import NESTED_REGION_KEYS

BRATS_EMPTY_HD95_MM = 373.12866
"""HD95 when exactly one of prediction and reference is empty: the diagonal of the BraTS grid,
sqrt(240**2 + 240**2 + 155**2) mm (about 373.13). This is the value of the BraTS 2020-2021
scoring as re-implemented in nnU-Net (``nnunet/dataset_conversion/Task082_BraTS_2020.py``,
``compute_BraTS_HD95``); the BraTS 2023 lesion-wise scorer rounds it to 374."""

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_LABEL_SUFFIX = re.compile(r"[_-](seg|pred|prediction|label|labels)$", re.IGNORECASE)
_LABEL_WORDS = ("seg", "label", "pred")
_GRID_TOLERANCE_MM = 1e-3


class RegionScores(TypedDict):
    dice: float
    hd95: float
    """In mm."""


def _joint_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` grown by one voxel (clipped to the array)."""
    extent = ndimage.find_objects((a | b).astype(np.uint8))[0]
    return tuple(
        slice(max(part.start - 1, 0), min(part.stop + 1, size))
        for part, size in zip(extent, a.shape, strict=True)
    )


def _region_scores(
    prediction: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float]
) -> RegionScores:
    predicted, expected = bool(prediction.any()), bool(reference.any())
    if not predicted and not expected:
        return RegionScores(dice=1.0, hd95=0.0)
    if predicted != expected:
        return RegionScores(dice=0.0, hd95=BRATS_EMPTY_HD95_MM)
    # Neither metric depends on voxels outside both masks: crop to their joint bounding box
    # (one voxel of margin, as MONAI's own crop keeps) before handing 9 M voxels to MONAI.
    box = _joint_box(prediction, reference)
    y_pred = torch.from_numpy(np.ascontiguousarray(prediction[box]))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(reference[box]))[None, None]
    dice = compute_dice(y_pred, y, include_background=True)
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated argument internally (get_mask_edges).
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy.*", category=FutureWarning
        )
        hd95 = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, spacing=list(spacing_mm)
        )
    return RegionScores(dice=float(dice.item()), hd95=float(hd95.item()))


def evaluate_pair(
    prediction_labels: np.ndarray, reference_labels: np.ndarray, spacing_mm: Sequence[float]
) -> dict[str, RegionScores]:
    """Dice and HD95 (mm) of WT, TC and ET for one case.

    Empty regions follow BraTS: both empty gives Dice 1 and HD95 0; only one empty gives Dice 0
    and HD95 ``BRATS_EMPTY_HD95_MM`` (373.13 mm).

    Args:
        prediction_labels: label map, BraTS 2021 or 2023 convention (detected).
        reference_labels: label map on the same grid, either convention (detected separately).
        spacing_mm: voxel size along each axis, in mm.

    Raises:
        EvaluationError: shapes differ, spacing is not one positive value per axis, or a map
            holds values that are not BraTS labels.
    """
    if prediction_labels.shape != reference_labels.shape:
        raise EvaluationError(
            f"prediction {prediction_labels.shape} and reference {reference_labels.shape} "
            "are not on the same grid"
        )
    if len(spacing_mm) != prediction_labels.ndim or min(spacing_mm) <= 0:
        raise EvaluationError(
            f"spacing_mm must give one positive size per axis, got {tuple(spacing_mm)}"
        )
    try:
        predicted = labels_to_regions(prediction_labels)
        expected = labels_to_regions(reference_labels)
    except ValueError as exc:
        raise EvaluationError(f"not a BraTS label map: {exc}") from exc
    return {
        region: _region_scores(predicted[index], expected[index], spacing_mm)
        for index, region in enumerate(NESTED_REGION_KEYS)
    }


def mean_scores(cases: Sequence[dict[str, RegionScores]]) -> dict[str, RegionScores]:
    """Mean Dice and HD95 per region over cases (BraTS ranks on these means)."""
    if not cases:
        raise EvaluationError("no case to average")
    return {
        region: RegionScores(
            dice=float(np.mean([case[region]["dice"] for case in cases])),
            hd95=float(np.mean([case[region]["hd95"] for case in cases])),
        )
        for region in NESTED_REGION_KEYS
    }


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """Scores per case and their mean, with what could not be paired."""

    cases: dict[str, dict[str, RegionScores]]
    mean: dict[str, RegionScores]
    unmatched_predictions: tuple[str, ...] = ()
    unmatched_labels: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "regions": list(NESTED_REGION_KEYS),
                "hd95_unit": "mm",
                "hd95_when_one_empty_mm": BRATS_EMPTY_HD95_MM,
                "cases": self.cases,
                "mean": self.mean,
                "unmatched_predictions": list(self.unmatched_predictions),
                "unmatched_labels": list(self.unmatched_labels),
            },
            indent=2,
        )

    def format_table(self) -> str:
        names = [*self.cases, "mean"]
        width = max(len(name) for name in names)
        header = "  ".join(
            [f"{'case':<{width}}"]
            + [f"{region.upper() + ' Dice':>8}" for region in NESTED_REGION_KEYS]
            + [f"{region.upper() + ' HD95':>8}" for region in NESTED_REGION_KEYS]
        )
        lines = [header, "-" * len(header)]
        for name, scores in [*self.cases.items(), ("mean", self.mean)]:
            dice = [f"{scores[region]['dice']:>8.4f}" for region in NESTED_REGION_KEYS]
            hd95 = [f"{scores[region]['hd95']:>8.2f}" for region in NESTED_REGION_KEYS]
            lines.append("  ".join([f"{name:<{width}}", *dice, *hd95]))
        for what, names_left in (
            ("predictions without labels", self.unmatched_predictions),
            ("labels without predictions", self.unmatched_labels),
        ):
            if names_left:
                lines.append(f"{what}: {', '.join(names_left)}")
        lines.append("HD95 in mm; one region empty in only one map scores Dice 0, HD95 373.13")
        return "\n".join(lines)


def case_id(path: Path) -> str:
    """Case id of a label file: its name without ``.nii[.gz]`` and a ``_seg``-like suffix.

    ``BraTS2021_00000_seg.nii.gz`` and ``BraTS2021_00000.nii.gz`` are both ``BraTS2021_00000``.
    """
    return _LABEL_SUFFIX.sub("", _NIFTI.sub("", path.name))


def _label_files(folder: Path) -> dict[str, Path]:
    """Label maps in a folder, by case id.

    NIfTI files directly inside are cases named after the file; a sub-folder holding exactly
    one NIfTI with seg/label/pred in its name is a case named after the sub-folder (the BraTS
    layout ``BraTS2021_00000/BraTS2021_00000_seg.nii.gz``).
    """
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and _NIFTI.search(entry.name):
            name, path = case_id(entry), entry
        elif entry.is_dir():
            candidates = [
                child
                for child in sorted(entry.iterdir())
                if child.is_file()
                and _NIFTI.search(child.name)
                and any(word in child.name.lower() for word in _LABEL_WORDS)
            ]
            if len(candidates) != 1:
                continue
            name, path = entry.name, candidates[0]
        else:
            continue
        if name in found:
            raise EvaluationError(f"{folder}: case {name} appears twice ({found[name]}, {path})")
        found[name] = path
    return found


def _read_labels(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Label array, affine and spacing (mm) of a label NIfTI."""
    try:
        image = nib.load(path)
    except (OSError, ValueError, ImageFileError) as exc:
        raise EvaluationError(f"cannot read {path} as NIfTI: {exc}") from exc
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image derives from it
        raise EvaluationError(f"{path} is not a NIfTI image")
    voxels = np.asanyarray(image.dataobj)
    if voxels.ndim != 3:
        raise EvaluationError(f"{path}: a label map is 3-D, got shape {voxels.shape}")
    if not np.issubdtype(voxels.dtype, np.integer):
        # Some writers store labels as floats; accept them only when they are whole numbers.
        if not np.array_equal(np.rint(voxels), voxels):
            raise EvaluationError(f"{path}: label values are not integers")
        voxels = voxels.astype(np.int32)
    spacing = tuple(float(size) for size in image.header.get_zooms()[:3])
    return voxels, np.asarray(image.affine), spacing


def evaluate_files(prediction: Path, reference: Path) -> dict[str, RegionScores]:
    """Scores of one prediction file against one reference file, on the reference's spacing."""
    predicted, predicted_affine, _ = _read_labels(prediction)
    expected, expected_affine, spacing = _read_labels(reference)
    if predicted.shape != expected.shape or not np.allclose(
        predicted_affine, expected_affine, atol=_GRID_TOLERANCE_MM
    ):
        raise EvaluationError(
            f"{prediction.name} and {reference.name} are not on the same grid "
            f"(shapes {predicted.shape} / {expected.shape}, or affines differ): resample the "
            "prediction onto the reference first"
        )
    return evaluate_pair(predicted, expected, spacing)


def evaluate_paths(prediction: Path, labels: Path) -> EvaluationReport:
    """Evaluate a prediction file against a label file, or a folder against a folder.

    Folders are paired by case id (``case_id``; sub-folders by their name); cases found on one
    side only are listed in the report, not scored.

    Raises:
        EvaluationError: a path is missing, a file is paired with a folder, nothing pairs, or a
            pair is not on the same grid.
    """
    for path in (prediction, labels):
        if not path.exists():
            raise EvaluationError(f"{path} does not exist")
    if prediction.is_file() and labels.is_file():
        scores = evaluate_files(prediction, labels)
        return EvaluationReport(cases={case_id(prediction): scores}, mean=mean_scores([scores]))
    if not (prediction.is_dir() and labels.is_dir()):
        raise EvaluationError("give two label files or two folders of label files")
    predicted, expected = _label_files(prediction), _label_files(labels)
    paired = sorted(predicted.keys() & expected.keys())
    if not paired:
        raise EvaluationError(
            f"no case id is common to {prediction} ({len(predicted)} files) and {labels} "
            f"({len(expected)} files)"
        )
    cases = {name: evaluate_files(predicted[name], expected[name]) for name in paired}
    return EvaluationReport(
        cases=cases,
        mean=mean_scores(list(cases.values())),
        unmatched_predictions=tuple(sorted(predicted.keys() - expected.keys())),
        unmatched_labels=tuple(sorted(expected.keys() - predicted.keys())),
    )
