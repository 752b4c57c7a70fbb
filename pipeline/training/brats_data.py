"""BraTS-style training cases: find the four sequences and the label map in a folder, load them.

File names differ between BraTS years and tools, so a file's role is read from the last
``_``/``-``-separated token of its name:

* 2018-2021: ``BraTS2021_00000_flair``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg`` (ET = 4);
* 2023+: ``BraTS-GLI-00000-000-t2f``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg`` (ET = 3);
* bare names as in the project's shared data: ``t1``, ``t1c``, ``t2``, ``fla``, ``t1n``,
  ``t2f``, ``t2w``; label maps named ``seg_<anything>`` (``seg_fusion_mav_5algos``).

Arrays stay in the stored (nibabel) voxel order: BraTS cases are already on one 1 mm
grid, and the network does not care about orientation as long as training and
inference agree (the manifest's preprocessing says LPS).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from segnode.pipeline.errors import PipelineError
from segnode.pipeline.intensity import zscore_over_mask
from segnode.pipeline.model.labels import labels_to_regions
from segnode.vocabulary import CHANNEL_ORDER, Role

log = logging.getLogger(__name__)

ROLE_TOKENS: dict[Role, tuple[str, ...]] = {
    Role.T1: ("t1", "t1n"),
    Role.T1C: ("t1c", "t1ce", "t1gd"),
    Role.T2: ("t2", "t2w"),
    Role.FLAIR: ("flair", "fla", "t2f"),
}
LABEL_TOKEN = "seg"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_TOLERANCE_MM = 1e-2


class TrainingDataError(PipelineError):
    """A training case is incomplete, ambiguous, or its volumes do not share one grid."""


@dataclass(frozen=True, slots=True)
class BratsCase:
    """One case folder: a NIfTI per role and, for training cases, a label map."""

    case_id: str
    folder: Path
    t1: Path
    t1c: Path
    t2: Path
    flair: Path
    label: Path | None = None

    def path(self, role: str) -> Path:
        """The image of a role (t1, t1c, t2, flair)."""
        if role not in set(Role):
            raise TrainingDataError(
                f"case {self.case_id}: unknown role {role!r}, expected "
                f"{tuple(known.value for known in Role)}"
            )
        path: Path = getattr(self, role)
        return path


def _stem(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def file_role(path: Path) -> str | None:
    """'t1', 't1c', 't2', 'flair', 'label', or None for a file that is none of them."""
    stem = _stem(path)
    if stem is None:
        return None
    tokens = re.split(r"[_\-.]", stem)
    if tokens[-1] == LABEL_TOKEN or tokens[0] == LABEL_TOKEN:
        return "label"
    for role, names in ROLE_TOKENS.items():
        if tokens[-1] in names:
            return role.value
    return None


def find_case(folder: Path) -> BratsCase:
    """The case in ``folder`` (files directly inside it; subfolders are ignored).

    Raises:
        TrainingDataError: a role is missing, or two files claim one role.
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        role = file_role(path) if path.is_file() else None
        if role is not None:
            found.setdefault(role, []).append(path)
    ambiguous = {role: [p.name for p in paths] for role, paths in found.items() if len(paths) > 1}
    if ambiguous:
        raise TrainingDataError(
            f"case folder {folder}: several files for one role {ambiguous}; keep one per role"
        )
    missing = [role.value for role in Role if role not in found]
    if missing:
        raise TrainingDataError(
            f"case folder {folder}: no image for {missing} (expected BraTS names such as "
            "*_t1ce.nii.gz or *-t1c.nii.gz)"
        )
    labels = found.get("label", [])
    return BratsCase(
        case_id=folder.name,
        folder=folder,
        t1=found["t1"][0],
        t1c=found["t1c"][0],
        t2=found["t2"][0],
        flair=found["flair"][0],
        label=labels[0] if labels else None,
    )


def find_cases(root: Path, require_label: bool = False) -> list[BratsCase]:
    """Every complete case in ``root`` or below it (BraTS 2018 nests HGG/LGG folders).

    Folders that hold NIfTIs but no complete case (or no label when ``require_label``)
    are skipped and logged, so a data root may hold other material.
    """
    if not root.is_dir():
        raise TrainingDataError(f"data root {root} is not a folder")
    cases: list[BratsCase] = []
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if not any(file_role(p) for p in folder.iterdir() if p.is_file()):
            continue
        try:
            case = find_case(folder)
        except TrainingDataError as exc:
            log.info("skipping folder: not a complete case", extra={"reason": str(exc)})
            continue
        if require_label and case.label is None:
            log.info("skipping case without a label map", extra={"case_id": case.case_id})
            continue
        cases.append(case)
    return cases


def normalise_nonzero(image: np.ndarray) -> np.ndarray:
    """Per channel z-score over that channel's non-zero voxels (paper section 3.7).

    Background (0) stays 0, so the brain mask survives normalisation.

    Args:
        image: (C, X, Y, Z).

    Returns:
        float32 array of the same shape.
    """
    out = np.empty(image.shape, dtype=np.float32)
    for index, channel in enumerate(image):
        out[index], _, _ = zscore_over_mask(channel, channel != 0)
    return out


def _read_nifti(path: Path, case_id: str) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
    except (OSError, ValueError, ImageFileError) as exc:
        raise TrainingDataError(f"case {case_id}: cannot read {path.name} as NIfTI: {exc}") from exc
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image derives from it
        raise TrainingDataError(f"case {case_id}: {path.name} is not a NIfTI image")
    return image


def load_case(
    case: BratsCase, channel_order: Sequence[str] = CHANNEL_ORDER, normalise: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """The case's image (C, X, Y, Z) float32 and regions (3, X, Y, Z) bool (WT, TC, ET).

    Args:
        case: from :func:`find_case`.
        channel_order: roles in the network's input order (the manifest's input_channels).
        normalise: z-score each channel over its non-zero voxels.

    Raises:
        TrainingDataError: volumes differ in shape or grid, or the label map is not BraTS.
    """
    images = [_read_nifti(case.path(role), case.case_id) for role in channel_order]
    reference = images[0]
    for role, image in zip(channel_order, images, strict=True):
        if image.shape != reference.shape or not np.allclose(
            image.affine, reference.affine, atol=AFFINE_TOLERANCE_MM
        ):
            raise TrainingDataError(
                f"case {case.case_id}: {role} is not on the grid of {channel_order[0]} "
                f"({image.shape} vs {reference.shape}); co-register the case first"
            )
    stacked = np.stack([image.get_fdata(dtype=np.float32) for image in images])
    try:
        volume = normalise_nonzero(stacked) if normalise else stacked
    except PipelineError as exc:
        raise TrainingDataError(f"case {case.case_id}: {exc}") from exc
    if case.label is None:
        return volume, None
    label_image = _read_nifti(case.label, case.case_id)
    if label_image.shape != reference.shape:
        raise TrainingDataError(
            f"case {case.case_id}: label map {label_image.shape} differs from images "
            f"{reference.shape}"
        )
    raw = np.asarray(label_image.dataobj)
    labels = np.rint(raw).astype(np.int16)
    if not np.array_equal(labels, raw):
        raise TrainingDataError(f"case {case.case_id}: label map holds non-integer values")
    try:
        regions = labels_to_regions(labels)
    except ValueError as exc:
        raise TrainingDataError(f"case {case.case_id}: {exc}") from exc
    return volume, regions
