"""Segment one preprocessed BraTS-style case folder with a model folder, end to end.

The case must already be on the grid the model was trained on (co-registered, skull-stripped,
1 mm: the BraTS convention the manifest's ``preprocessing`` describes); nothing here resamples.
Each sequence is z-scored over its non-zero voxels, the network(s) run, the BraTS
post-processing applies, and the label map is written on the case's own grid (affine and header
of its first input sequence), so it overlays the inputs in any viewer.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from segnode.config.settings import ModelSettings
from segnode.files import atomic_write
from segnode.pipeline.errors import PipelineError
from segnode.pipeline.model.backend import on_backend
from segnode.pipeline.model.device import select_device
from segnode.pipeline.model.postprocess import PostprocessRecord
from segnode.pipeline.model.registry import load_model
from segnode.pipeline.model.segmentation import labels_from, region_probabilities
from segnode.pipeline.training.brats_data import find_case, load_case
from segnode.vocabulary import LabelConvention

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
    atomic_write(out, lambda partial: nib.save(image, partial))


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
    backend: str
    """The engine that ran the network and its version ("openvino 2026.4.1")."""
    inference_s: float
    postprocessing: PostprocessRecord


def predict_case(
    case_dir: Path,
    out: Path,
    model_folder: Path,
    settings: ModelSettings,
    *,
    convention: LabelConvention = LabelConvention.BRATS_2021,
    roi_size: tuple[int, int, int] | None = None,
) -> PredictionSummary:
    """Segment one case folder and write the label map to ``out`` (.nii or .nii.gz).

    The model runs as the node runs it (``segmentation.region_probabilities`` and
    ``labels_from``), on the brain box of the case.

    Args:
        case_dir: folder with one NIfTI per sequence the model takes (t1, t1c, t2, flair).
        out: label map to write; labels 1 NCR, 2 ED, ET 4 (2021) or 3 (2023).
        model_folder: ``manifest.json`` and the weights it names (``registry.load_model``).
        settings: ``[model]``: device, TTA and the post-processing overrides (None values:
            the model's tuned ones); its ``default`` and ``ensemble`` are not read here.
        convention: label values to write.
        roi_size: sliding-window size on the model's grid; None lets ``choose_roi`` decide.

    Raises:
        PipelineError: an unreadable or unregistered case; a bad model folder or a checksum
            mismatch (``segnode.pipeline.model.errors``); an unavailable device; an inference
            failure (``InferenceError``).
    """
    if not _NIFTI.search(out.name):
        raise PipelineError(f"output {out} must end in .nii or .nii.gz")
    device = select_device(settings.device)
    model, backend = on_backend(
        load_model(model_folder, device),
        settings.backend,
        device,
        Path(tempfile.gettempdir()) / "segnode-model-exports",
    )
    roles = model.manifest.input_channels
    # The same reader as training (every BraTS naming), without the label map if one lies there.
    case = replace(find_case(case_dir), label=None)
    full_image, _ = load_case(case, roles)
    reference = nib.load(case.path(roles[0]))
    if not isinstance(reference, nib.Nifti1Image):  # load_case read it as NIfTI already
        raise PipelineError(f"{case.path(roles[0])} is not a NIfTI image")
    box = brain_box(full_image)
    image = np.ascontiguousarray(full_image[(slice(None), *box)])
    started = time.monotonic()
    cropped, roi = region_probabilities(
        [model], image, roles, tta=settings.tta, device=device, roi_size=roi_size
    )
    inference_s = time.monotonic() - started
    probabilities = np.zeros((cropped.shape[0], *full_image.shape[1:]), dtype=np.float32)
    probabilities[(slice(None), *box)] = cropped
    labels, record = labels_from(probabilities, model, settings, convention)
    write_labels(labels, reference, out)
    return PredictionSummary(
        output=out,
        model_id=model.manifest.id,
        weights_sha256=model.sha256,
        shape=tuple(int(size) for size in labels.shape),
        roi_size=roi,
        tta=settings.tta,
        device=device.type,
        backend=f"{backend.name.value} {backend.version}",
        inference_s=inference_s,
        postprocessing=record,
    )
