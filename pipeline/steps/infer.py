"""Step ``infer``: the network(s) on the preprocessed grid, labels mapped back onto the T1c."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from segnode.pipeline.model.agreement import AgreementSummary
from segnode.pipeline.model.segmentation import SegmentationRequest, segment
from segnode.pipeline.preprocessing import labels_to_source
from segnode.pipeline.quality.record import TtaAgreement
from segnode.pipeline.series_labels import grid_label_image
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import InferenceRecord, Workspace, jsonable
from segnode.pipeline.workspace_images import read_preprocessed, read_volume, write_image
from segnode.vocabulary import CHANNEL_ORDER, LabelConvention, Role

log = logging.getLogger(__name__)


def _agreement(summary: AgreementSummary | None, spacing_mm: Sequence[float]) -> TtaAgreement | None:
    """The passes' agreement in the reader's units (ml on the network's grid)."""
    if summary is None:
        return None
    voxel_ml = math.prod(spacing_mm) / 1000.0
    return TtaAgreement(
        passes=summary.passes,
        volume_ml={
            region: (round(low, 2), round(high, 2))
            for region, (low, high) in summary.volumes_ml(voxel_ml).items()
        },
        disagreement={region: round(share, 4) for region, share in summary.disagreement.items()},
        mean_std={region: round(std, 4) for region, std in summary.mean_std.items()},
    )


def run(workspace: Workspace, settings: StepSettings) -> dict[str, object]:
    """Segment, write ``inference/labels_source.mha``, ``labels_grid.mha`` and ``record.json``.

    The grid's label map is kept for the series registration moved against the T1c: the
    write step maps it onto each of them (``segnode.pipeline.series_labels``).
    """
    study = read_preprocessed(workspace)
    result = segment(
        SegmentationRequest(
            image=study.stacked(CHANNEL_ORDER),
            roles=tuple(role.value for role in CHANNEL_ORDER),
            data_dir=settings.data_dir,
            model=settings.model,
        )
    )
    source = labels_to_source(result.labels, study, read_volume(workspace, Role.T1C))
    write_image(workspace, workspace.source_labels_path, source)
    write_image(workspace, workspace.grid_labels_path, grid_label_image(result.labels, study.grid))
    grid_counts = {int(v): int(n) for v, n in zip(*np.unique(result.labels, return_counts=True), strict=True)}
    record = InferenceRecord.model_validate(
        {
            "models": result.models,
            "label_convention": LabelConvention.BRATS_2021,
            "grid_label_voxels": grid_counts,
            "tta_agreement": _agreement(result.agreement, study.grid.GetSpacing()),
            **jsonable(result.record),
        }
    )
    workspace.write_inference(record)
    # A line of this step's own: with warm workers the model was loaded before the job.
    log.info(
        "segmented",
        extra={"models": record.ensemble_id, "device": record.device, "tta": record.tta},
    )
    return record.model_dump(mode="json")
