"""Step ``preprocess``: brain extraction, co-registration, 1 mm grid, normalisation (BraTS)."""

from __future__ import annotations

from segnode.pipeline.preprocessing import preprocess
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace
from segnode.pipeline.workspace_images import read_volume, write_preprocessed
from segnode.vocabulary import CHANNEL_ORDER


def run(workspace: Workspace, settings: StepSettings) -> dict[str, object]:
    """The four volumes in, the network's input grid and its record out."""
    volumes = {role: read_volume(workspace, role) for role in CHANNEL_ORDER}
    study = preprocess(volumes, settings.preprocessing)
    write_preprocessed(workspace, study)
    return dict(study.record)
