"""Segment one preprocessed BraTS-style case folder with a model folder, end to end.

The case must already be on the grid the model was trained on (co-registered, skull-stripped,
1 mm: the BraTS convention the manifest's ``preprocessing`` describes); nothing here resamples.
Each sequence is z-scored over its non-zero voxels, the network(s) run, the BraTS
post-processing applies, and the label map is written on the case's own grid (affine and header
of its first input sequence), so it overlays the inputs in any viewer.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import ImageFileError

from pipeline.errors import PipelineError
from pipeline.intensity import zscore_over_mask
from pipeline.model.inference import PostprocessRecord, choose_roi, postprocess, predict_regions
from pipeline.model.labels import LabelConvention
from pipeline.model.loading import load_model_folder

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_GRID_TOLERANCE_MM = 1e-3

# --- Case reading: a stop-gap until pipeline.model.brats_data.find_case exists; replace it
# --- then (private on purpose). Only the last token of each file name is looked at.
_ROLE_TOKENS = {
    "t1": "t1",
    "t1n": "t1",
    "t1c": "t1c",
    "t1ce": "t1c",
    "t1gd": "t1c",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "fla": "flair",
    "t2f": "flair",
}
"""Last ``_``/``-`` token of a file name -> role: BraTS 2018-2021 (``*_t1ce``), 2023+
(``*-t1n/-t1c/-t2w/-t2f``) and bare names (``t1.nii.gz``, ``fla.nii.gz``)."""


def _find_case_images(case_dir: Path, roles: Sequence[str]) -> dict[str, Path]:
    """The NIfTI file of each role in a case folder (stop-gap for brats_data.find_case)."""
    if not case_dir.is_dir():
        raise PipelineError(f"case folder {case_dir} does not exist or is not a folder")
    found: dict[str, list[Path]] = {}
    for path in sorted(case_dir.iterdir()):
        if not (path.is_file() and _NIFTI.search(path.name)):
            continue
        token = re.split(r"[_-]", _NIFTI.sub("", path.name))[-1].lower()
        role = _ROLE_TOKENS.get(token)
        if role is not None:
            found.setdefault(role, []).append(path)
    missing = [role for role in roles if role not in found]
    if missing:
        raise PipelineError(
            f"case folder {case_dir} lacks {', '.join(missing)}: expected files named like "
            "*_t1/_t1ce/_t2/_flair, *-t1n/-t1c/-t2w/-t2f or t1/t1c/t2/fla (.nii or .nii.gz)"
        )
    several = {role: paths for role, paths in found.items() if role in roles and len(paths) > 1}
    if several:
        listed = "; ".join(
            f"{role}: {', '.join(p.name for p in paths)}" for role, paths in several.items()
        )
        raise PipelineError(f"case folder {case_dir} has several files for {listed}")
    return {role: found[role][0] for role in roles}


def _read_nifti(path: Path) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
    except (OSError, ValueError, ImageFileError) as exc:
        raise PipelineError(f"cannot read {path} as NIfTI: {exc}") from exc
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image derives from it
        raise PipelineError(f"{path} is not a NIfTI image")
    return image


def _load_case(
    paths: Mapping[str, Path], roles: Sequence[str]
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """(channels, x, y, z) float32 z-scored input in ``roles`` order, and the reference image."""
    images = [_read_nifti(paths[role]) for role in roles]
    reference = images[0]
    channels = []
    for role, image in zip(roles, images, strict=True):
        if image.shape != reference.shape or not np.allclose(
            image.affine, reference.affine, atol=_GRID_TOLERANCE_MM
        ):
            raise PipelineError(
                f"{paths[role].name} is not on the grid of {paths[roles[0]].name}: the case is "
                "not co-registered; preprocess it first"
            )
        voxels = np.asanyarray(image.dataobj).astype(np.float32)
        if voxels.ndim != 3:
            raise PipelineError(f"{paths[role].name} is not a 3-D volume (shape {voxels.shape})")
        # Myronenko 2018, section 3.7: zero mean, unit std over the non-zero (brain) voxels.
        normalised, _, _ = zscore_over_mask(voxels, voxels != 0)
        channels.append(normalised)
    return np.stack(channels), reference


# --- end of the stop-gap case reading.


BRAIN_BOX_MARGIN_VOXELS = 8


def brain_box(image: np.ndarray, margin: int = BRAIN_BOX_MARGIN_VOXELS) -> tuple[slice, slice, slice]:
    """The non-zero (skull-stripped brain) bounding box of (C, X, Y, Z) channels, plus a margin.

    Inference runs on this box, as the network was trained on brain crops (paper: 160x192x128)
    and the imaging pipeline crops the same way: GroupNorm statistics then describe brain, not
    the empty field of view, and there is a third of the voxels to compute.
    """
    inside = np.argwhere(np.any(image != 0, axis=0))
    if inside.size == 0:
        raise PipelineError("the case is empty: no non-zero voxel in any channel")
    low = np.maximum(inside.min(axis=0) - margin, 0)
    high = np.minimum(inside.max(axis=0) + margin + 1, image.shape[1:])
    return (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))


def write_labels(labels: np.ndarray, reference: nib.Nifti1Image, out: Path) -> None:
    """Write a uint8 label map on the reference's grid; atomically, never half a file."""
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(labels.astype(np.uint8), reference.affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = 0, int(labels.max(initial=0))
    image.header["descrip"] = b"segnode tumour labels (research use only)"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".partial-{out.name}")
    nib.save(image, partial)
    os.replace(partial, out)


@dataclass(frozen=True, slots=True)
class PredictionSummary:
    """What ``predict_case`` did: for the console, the job record and tests."""

    output: Path
    model_id: str
    weights_sha256: str
    shape: tuple[int, ...]
    roi_size: tuple[int, int, int] | None
    """None: the whole volume in one pass."""
    tta: bool
    device: str
    inference_s: float
    postprocessing: PostprocessRecord


def select_device() -> tuple[torch.device, torch.dtype | None]:
    """CUDA with bf16 (fp16 on older GPUs) autocast when present, else CPU in float32."""
    if torch.cuda.is_available():
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), amp
    return torch.device("cpu"), None


def predict_case(
    case_dir: Path,
    out: Path,
    model_folder: Path,
    *,
    convention: LabelConvention = LabelConvention.BRATS_2021,
    tta: bool = True,
    roi_size: tuple[int, int, int] | None = None,
    et_min_voxels: int | None = 500,
    min_component_voxels: int | None = 50,
) -> PredictionSummary:
    """Segment one case folder and write the label map to ``out`` (.nii or .nii.gz).

    Args:
        case_dir: folder with one NIfTI per sequence the model takes (t1, t1c, t2, flair).
        out: label map to write; labels 1 NCR, 2 ED, ET 4 (2021) or 3 (2023).
        model_folder: ``manifest.json`` and the weights it names (checksum verified).
        convention: label values to write.
        tta: average over the 8 axis flips (8 forward passes).
        roi_size: sliding-window size; None lets ``choose_roi`` decide.
        et_min_voxels: smaller ET becomes NCR; None disables.
        min_component_voxels: smaller tumour components are removed; None disables.

    Raises:
        PipelineError: an unreadable or unregistered case; a bad model folder or a checksum
            mismatch (``pipeline.model.errors``); an inference failure (``InferenceError``).
    """
    if not _NIFTI.search(out.name):
        raise PipelineError(f"output {out} must end in .nii or .nii.gz")
    device, amp_dtype = select_device()
    manifest, network = load_model_folder(model_folder)
    roles = manifest.input_channels
    full_image, reference = _load_case(_find_case_images(case_dir, roles), roles)
    box = brain_box(full_image)
    image = np.ascontiguousarray(full_image[(slice(None), *box)])
    roi = roi_size if roi_size is not None else choose_roi(image.shape[1:])
    started = time.monotonic()
    cropped = predict_regions(
        [network],
        image,
        output_channels=manifest.output_channels,
        tta=tta,
        roi_size=roi,
        device=device,
        amp_dtype=amp_dtype,
    )
    inference_s = time.monotonic() - started
    probabilities = np.zeros((cropped.shape[0], *full_image.shape[1:]), dtype=np.float32)
    probabilities[(slice(None), *box)] = cropped
    labels, record = postprocess(
        probabilities,
        et_min_voxels=et_min_voxels,
        min_component_voxels=min_component_voxels,
        convention=convention,
    )
    write_labels(labels, reference, out)
    return PredictionSummary(
        output=out,
        model_id=manifest.id,
        weights_sha256=manifest.weights_sha256,
        shape=tuple(int(size) for size in labels.shape),
        roi_size=roi,
        tta=tta,
        device=device.type,
        inference_s=inference_s,
        postprocessing=record,
    )
