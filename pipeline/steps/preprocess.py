"""Step ``preprocess``: brain extraction, co-registration, 1 mm grid, normalisation (BraTS)."""

from __future__ import annotations

from segnode.pipeline.preprocessing import preprocess
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace
from segnode.pipeline.workspace_images import read_brain_mask, read_volume, write_preprocessed
from segnode.vocabulary import CHANNEL_ORDER, Role


def run(workspace: Workspace, settings: StepSettings) -> dict[str, object]:
    """The four volumes in (and the brain mask the convert step made, if it did), the
    network's input grid and its record out."""
    volumes = {role: read_volume(workspace, role) for role in CHANNEL_ORDER}
    role = Role(settings.preprocessing.brain_extraction_role)
    brain = read_brain_mask(workspace, role, volumes[role].series_instance_uid)
    study = preprocess(volumes, settings.preprocessing, brain)
    write_preprocessed(workspace, study)
    return dict(study.record)
