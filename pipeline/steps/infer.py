"""Step ``infer``: the network(s) on the preprocessed grid, labels mapped back onto the T1c."""

from __future__ import annotations

from typing import Any

import numpy as np

from segnode.pipeline.model.labels import LabelConvention
from segnode.pipeline.model.segmentation import SegmentationRequest, segment
from segnode.pipeline.preprocessing import CHANNEL_ORDER, labels_to_source
from segnode.pipeline.selection import Role
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace
from segnode.pipeline.workspace_images import read_preprocessed, read_volume, write_image


def run(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """Segment, write ``inference/labels_source.mha`` and ``inference/record.json``."""
    study = read_preprocessed(workspace)
    model = settings.model
    result = segment(
        SegmentationRequest(
            image=study.stacked(CHANNEL_ORDER),
            roles=tuple(role.value for role in CHANNEL_ORDER),
            model_ids=(model.default, *model.ensemble),
            data_dir=settings.data_dir,
            tta=model.tta,
            device=model.device,
            threshold=model.threshold,
            et_threshold=model.et_threshold,
            et_min_voxels=model.et_min_voxels,
            min_component_voxels=model.min_component_voxels,
        )
    )
    source = labels_to_source(result.labels, study, read_volume(workspace, Role.T1C))
    write_image(workspace, "inference/labels_source.mha", source)
    grid_counts = {int(v): int(n) for v, n in zip(*np.unique(result.labels, return_counts=True), strict=True)}
    record = {
        "models": list(result.models),
        "label_convention": LabelConvention.BRATS_2021.value,
        "grid_label_voxels": grid_counts,
        **result.record,
    }
    workspace.write_json("inference/record.json", record)
    return record
