"""Step ``infer``: the network(s) on the preprocessed grid, labels mapped back onto the T1c."""

from __future__ import annotations

import numpy as np

from segnode.pipeline.model.segmentation import SegmentationRequest, segment
from segnode.pipeline.preprocessing import labels_to_source
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import InferenceRecord, Workspace, jsonable
from segnode.pipeline.workspace_images import read_preprocessed, read_volume, write_image
from segnode.vocabulary import CHANNEL_ORDER, LabelConvention, Role


def run(workspace: Workspace, settings: StepSettings) -> dict[str, object]:
    """Segment, write ``inference/labels_source.mha`` and ``inference/record.json``."""
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
    grid_counts = {int(v): int(n) for v, n in zip(*np.unique(result.labels, return_counts=True), strict=True)}
    record = InferenceRecord.model_validate(
        {
            "models": result.models,
            "label_convention": LabelConvention.BRATS_2021,
            "grid_label_voxels": grid_counts,
            **jsonable(result.record),
        }
    )
    workspace.write_inference(record)
    return record.model_dump(mode="json")
