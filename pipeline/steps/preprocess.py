"""Step ``preprocess``: brain extraction, co-registration, 1 mm grid, normalisation (BraTS)."""

from __future__ import annotations

from typing import Any

from segnode.pipeline.preprocessing import CHANNEL_ORDER, preprocess
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace
from segnode.pipeline.workspace_images import read_volume, write_preprocessed


def run(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """The four volumes in, the network's input grid and its record out."""
    volumes = {role: read_volume(workspace, role) for role in CHANNEL_ORDER}
    study = preprocess(volumes, settings.preprocessing)
    write_preprocessed(workspace, study)
    return dict(study.record)
