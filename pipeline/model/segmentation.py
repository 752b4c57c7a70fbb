"""Segment one preprocessed study with the registry's models (one or an ensemble).

Runs inside a pipeline worker process (``node/jobs/worker_pool.py``), never in the DICOM
listener's process. Models are loaded once per process and verified against their sha256
at load, so a worker that segments many studies pays the load once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from segnode.pipeline.errors import InferenceError
from segnode.pipeline.model.inference import (
    choose_roi,
    postprocess_with,
    predict_regions,
    resolve_postprocessing,
)
from segnode.pipeline.model.labels import LabelConvention
from segnode.pipeline.model.registry import LoadedModel, node_registry
from segnode.pipeline.model.resolution import coarse_shape


@dataclass(frozen=True)
class SegmentationRequest:
    """One preprocessed study: channels in ``roles`` order, (C, X, Y, Z) float32."""

    image: np.ndarray
    roles: tuple[str, ...]
    model_ids: tuple[str, ...]
    data_dir: Path
    tta: bool = True
    device: str = "auto"
    threshold: float | None = None
    et_threshold: float | None = None
    et_min_voxels: int | None = None
    """None: the default model's tuned value (``inference.resolve_postprocessing``); 0: off."""
    min_component_voxels: int | None = None
    convention: LabelConvention = LabelConvention.BRATS_2021


@dataclass(frozen=True)
class SegmentationResult:
    labels: np.ndarray
    """(X, Y, Z) uint8 BraTS labels on the request's grid."""
    models: tuple[dict[str, str], ...]
    """id, version and sha256 of every model used (for the job's provenance)."""
    record: dict[str, object] = field(default_factory=dict)
    worker_pid: int = 0


_models: dict[tuple[str, str], LoadedModel] = {}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InferenceError("model.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def _model(data_dir: Path, model_id: str, device: torch.device) -> LoadedModel:
    key = (model_id, str(device))
    if key not in _models:
        _models[key] = node_registry(data_dir).load(model_id, device)
    return _models[key]


def segment(request: SegmentationRequest) -> SegmentationResult:
    """Each model gets the channels in its own manifest's order; outputs are averaged."""
    device = _device(request.device)
    loaded = [_model(request.data_dir, model_id, device) for model_id in request.model_ids]
    probabilities = []
    for model in loaded:
        order = [request.roles.index(role) for role in model.manifest.input_channels]
        factor = model.manifest.spacing_factor()
        probabilities.append(
            predict_regions(
                [model.network],
                np.ascontiguousarray(request.image[order]),
                output_channels=model.manifest.output_channels,
                tta=request.tta,
                roi_size=choose_roi(coarse_shape(request.image.shape[1:], factor)),
                device=device,
                amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
                spacing_factor=factor,
            )
        )
    mean = np.mean(probabilities, axis=0)
    chosen = resolve_postprocessing(
        loaded[0].manifest.postprocessing,
        threshold=request.threshold,
        et_threshold=request.et_threshold,
        et_min_voxels=request.et_min_voxels,
        min_component_voxels=request.min_component_voxels,
    )
    labels, record = postprocess_with(mean, chosen, request.convention)
    return SegmentationResult(
        labels=labels,
        models=tuple(
            {"id": m.manifest.id, "version": m.manifest.version, "sha256": m.sha256} for m in loaded
        ),
        record={"postprocessing": record.as_dict(), "device": str(device), "tta": request.tta},
        worker_pid=os.getpid(),
    )
