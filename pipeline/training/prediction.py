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
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from segnode.pipeline.errors import PipelineError
from segnode.pipeline.model.inference import (
    PostprocessRecord,
    choose_roi,
    postprocess_with,
    predict_regions,
    resolve_postprocessing,
)
from segnode.pipeline.model.labels import LabelConvention
from segnode.pipeline.model.loading import load_model_folder
from segnode.pipeline.model.resolution import coarse_shape
from segnode.pipeline.training.brats_data import find_case, load_case

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
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
    threshold: float | None = None,
    et_threshold: float | None = None,
    et_min_voxels: int | None = None,
    min_component_voxels: int | None = None,
) -> PredictionSummary:
    """Segment one case folder and write the label map to ``out`` (.nii or .nii.gz).

    Args:
        case_dir: folder with one NIfTI per sequence the model takes (t1, t1c, t2, flair).
        out: label map to write; labels 1 NCR, 2 ED, ET 4 (2021) or 3 (2023).
        model_folder: ``manifest.json`` and the weights it names (checksum verified).
        convention: label values to write.
        tta: average over the 8 axis flips (8 forward passes).
        roi_size: sliding-window size on the model's grid; None lets ``choose_roi`` decide.
        threshold: region probability threshold; None: the model's tuned value.
        et_threshold: the enhancing-tumour output's threshold; None: the model's tuned value.
        et_min_voxels: smaller ET becomes NCR; 0 disables; None: the model's tuned value.
        min_component_voxels: smaller tumour components are removed; 0 disables; None: the
            model's tuned value (``inference.resolve_postprocessing``).

    Raises:
        PipelineError: an unreadable or unregistered case; a bad model folder or a checksum
            mismatch (``segnode.pipeline.model.errors``); an inference failure (``InferenceError``).
    """
    if not _NIFTI.search(out.name):
        raise PipelineError(f"output {out} must end in .nii or .nii.gz")
    device, amp_dtype = select_device()
    manifest, network = load_model_folder(model_folder)
    roles = manifest.input_channels
    # The same reader as training (every BraTS naming), without the label map if one lies there.
    case = replace(find_case(case_dir), label=None)
    full_image, _ = load_case(case, roles)
    reference = nib.load(case.path(roles[0]))
    if not isinstance(reference, nib.Nifti1Image):  # load_case read it as NIfTI already
        raise PipelineError(f"{case.path(roles[0])} is not a NIfTI image")
    box = brain_box(full_image)
    image = np.ascontiguousarray(full_image[(slice(None), *box)])
    factor = manifest.spacing_factor()
    roi = roi_size if roi_size is not None else choose_roi(coarse_shape(image.shape[1:], factor))
    started = time.monotonic()
    cropped = predict_regions(
        [network],
        image,
        output_channels=manifest.output_channels,
        tta=tta,
        roi_size=roi,
        device=device,
        amp_dtype=amp_dtype,
        spacing_factor=factor,
    )
    inference_s = time.monotonic() - started
    probabilities = np.zeros((cropped.shape[0], *full_image.shape[1:]), dtype=np.float32)
    probabilities[(slice(None), *box)] = cropped
    chosen = resolve_postprocessing(
        manifest.postprocessing,
        threshold=threshold,
        et_threshold=et_threshold,
        et_min_voxels=et_min_voxels,
        min_component_voxels=min_component_voxels,
    )
    labels, record = postprocess_with(probabilities, chosen, convention)
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
