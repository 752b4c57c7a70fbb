"""Segment one preprocessed study with the registry's models (one or an ensemble).

Runs inside a pipeline worker process (``node/jobs/worker_pool.py``), never in the DICOM
listener's process. Models are loaded once per process and verified against their sha256
at load, so a worker that segments many studies pays the load once.

``region_probabilities`` and ``labels_from`` are the core that ``segnode predict``
(``segnode.pipeline.training.prediction``) shares: the same channel order per model, the
same window choice and autocast type (``device``), the same post-processing resolution from
``[model]`` (``ModelSettings``) over the model's tuned values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from segnode.config.settings import ModelSettings
from segnode.pipeline.model.agreement import THRESHOLD, AgreementSummary, PassAgreement
from segnode.pipeline.model.backend import BackendChoice, on_backend
from segnode.pipeline.model.device import autocast_dtype, select_device
from segnode.pipeline.model.inference import choose_roi, predict_regions, region_order
from segnode.pipeline.model.manifest import PostprocessingSpec
from segnode.pipeline.model.postprocess import (
    PostprocessRecord,
    postprocess_with,
    resolve_postprocessing,
)
from segnode.pipeline.model.registry import LoadedModel, node_registry
from segnode.pipeline.model.resolution import coarse_shape
from segnode.vocabulary import NESTED_REGIONS, LabelConvention, Region


@dataclass(frozen=True)
class SegmentationRequest:
    """One preprocessed study: channels in ``roles`` order, (C, X, Y, Z) float32."""

    image: np.ndarray
    roles: tuple[str, ...]
    data_dir: Path
    model: ModelSettings
    """``[model]``: which models (default, ensemble), device, TTA and the post-processing
    overrides; None values there mean the default model's tuned values."""
    convention: LabelConvention = LabelConvention.BRATS_2021

    @property
    def model_ids(self) -> tuple[str, ...]:
        return (self.model.default, *self.model.ensemble)


@dataclass(frozen=True)
class SegmentationResult:
    labels: np.ndarray
    """(X, Y, Z) uint8 BraTS labels on the request's grid."""
    models: tuple[dict[str, str], ...]
    """id, version and sha256 of every model used (for the job's provenance)."""
    record: dict[str, object] = field(default_factory=dict)
    agreement: AgreementSummary | None = None
    """How far the TTA passes (and ensemble members) agree; None with a single pass."""
    worker_pid: int = 0


EXPORTS_FOLDER = "model-exports"
"""Under the data folder: networks exported for another backend (OpenVINO IR), by checksum."""

_models: dict[tuple[str, str, str, str], tuple[LoadedModel, BackendChoice]] = {}


def runnable_model(
    data_dir: Path, model_id: str, device: torch.device, backend: str
) -> tuple[LoadedModel, BackendChoice]:
    """A registry model on its backend (``segnode.pipeline.model.backend``), loaded once per
    process: the node's workers and ``segnode predict`` run a model the same way."""
    key = (str(data_dir), model_id, str(device), backend)
    if key not in _models:
        loaded = node_registry(data_dir).load(model_id, device)
        _models[key] = on_backend(loaded, backend, device, data_dir / EXPORTS_FOLDER)
    return _models[key]


def preload_models(
    data_dir: Path, model_ids: Sequence[str], device: torch.device, backend: str
) -> tuple[str, ...]:
    """Load (and keep, in this process) the models a job will run: a warm worker's first
    ``segment`` finds them loaded (and exported). Returns the ids loaded."""
    for model_id in model_ids:
        runnable_model(data_dir, model_id, device, backend)
    return tuple(model_ids)


def region_probabilities(
    models: Sequence[LoadedModel],
    image: np.ndarray,
    roles: Sequence[str],
    *,
    tta: bool,
    device: torch.device,
    roi_size: tuple[int, int, int] | None = None,
    agreements: list[AgreementSummary] | None = None,
    thresholds: Mapping[Region, float] | None = None,
) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """Mean WT/TC/ET probabilities of ``models`` on ``image``, and the window used.

    Each model gets the channels in its own manifest's order and runs on its own grid
    (``spacing_factor``); autocast follows the device policy. ``roi_size`` None lets
    ``choose_roi`` decide per model (full volume when it fits). With ``agreements``, one
    summary of the passes' agreement per model is appended to it (models on different
    grids cannot be compared voxel by voxel), each pass's regions taken at ``thresholds``
    (the post-processing's; 0.5 without).
    """
    probabilities = []
    window = roi_size
    for model in models:
        collector = None
        if agreements is not None:
            by_channel = dict(
                zip(region_order(model.manifest.output_channels), NESTED_REGIONS, strict=True)
            )
            collector = PassAgreement(
                thresholds=tuple(
                    (thresholds or {}).get(by_channel[channel], THRESHOLD)
                    for channel in sorted(by_channel)
                )
            )
        order = [list(roles).index(role) for role in model.manifest.input_channels]
        factor = model.manifest.spacing_factor()
        if roi_size is None:
            window = choose_roi(coarse_shape(image.shape[1:], factor))
        probabilities.append(
            predict_regions(
                [model.network],
                np.ascontiguousarray(image[order]),
                output_channels=model.manifest.output_channels,
                tta=tta,
                roi_size=window,
                device=device,
                amp_dtype=autocast_dtype(device),
                spacing_factor=factor,
                agreement=collector,
            )
        )
        if agreements is not None and collector is not None:
            order = region_order(model.manifest.output_channels)
            agreements.append(collector.summary(order, voxel_scale=factor**3))
    mean: np.ndarray = np.mean(probabilities, axis=0)
    return mean, window


def labels_from(
    probabilities: np.ndarray,
    model: LoadedModel,
    settings: ModelSettings,
    convention: LabelConvention,
) -> tuple[np.ndarray, PostprocessRecord]:
    """The label map: ``[model]``'s post-processing values over ``model``'s tuned ones."""
    return postprocess_with(probabilities, chosen_postprocessing(model, settings), convention)


def chosen_postprocessing(model: LoadedModel, settings: ModelSettings) -> PostprocessingSpec:
    """``[model]``'s post-processing values over ``model``'s tuned ones."""
    return resolve_postprocessing(
        model.manifest.postprocessing,
        threshold=settings.threshold,
        et_threshold=settings.et_threshold,
        et_min_voxels=settings.et_min_voxels,
        min_component_voxels=settings.min_component_voxels,
    )


def region_thresholds(spec: PostprocessingSpec) -> dict[Region, float]:
    """The probability at which each network region starts (WT and TC share one)."""
    et = spec.et_threshold if spec.et_threshold is not None else spec.threshold
    return {Region.WT: spec.threshold, Region.TC: spec.threshold, Region.ET: et}


def segment(request: SegmentationRequest) -> SegmentationResult:
    """Each model gets the channels in its own manifest's order; outputs are averaged."""
    device = select_device(request.model.device)
    runnable = [
        runnable_model(request.data_dir, model_id, device, request.model.backend)
        for model_id in request.model_ids
    ]
    loaded = [model for model, _ in runnable]
    chosen = chosen_postprocessing(loaded[0], request.model)
    agreements: list[AgreementSummary] = []
    mean, _ = region_probabilities(
        loaded,
        request.image,
        request.roles,
        tta=request.model.tta,
        device=device,
        agreements=agreements,
        thresholds=region_thresholds(chosen),
    )
    labels, record = postprocess_with(mean, chosen, request.convention)
    return SegmentationResult(
        labels=labels,
        models=tuple(
            {"id": m.manifest.id, "version": m.manifest.version, "sha256": m.sha256, **c.as_record()}
            for m, c in runnable
        ),
        record={
            "postprocessing": record.as_dict(),
            "device": str(device),
            "tta": request.model.tta,
        },
        agreement=combined_agreement(agreements),
        worker_pid=os.getpid(),
    )


def combined_agreement(summaries: Sequence[AgreementSummary]) -> AgreementSummary | None:
    """One summary for an ensemble: every pass's volumes, the worst member's voxel figures.

    None with fewer than two passes in all (no TTA, one model): nothing to compare.
    """
    if sum(summary.passes for summary in summaries) < 2:
        return None
    regions = summaries[0].pass_voxels.keys()
    return AgreementSummary(
        passes=sum(summary.passes for summary in summaries),
        pass_voxels={r: tuple(n for s in summaries for n in s.pass_voxels[r]) for r in regions},
        disagreement={r: max(s.disagreement[r] for s in summaries) for r in regions},
        mean_std={r: max(s.mean_std[r] for s in summaries) for r in regions},
    )
