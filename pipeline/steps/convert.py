"""Step ``convert``: each selected series becomes a volume in patient space."""

from __future__ import annotations

from segnode.pipeline.conversion import SpacingPolicy, convert_series
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace
from segnode.pipeline.workspace_images import write_volume
from segnode.vocabulary import Role


def run(workspace: Workspace, settings: StepSettings) -> dict[str, object]:
    """Convert the four selected series (SimpleITK/GDCM pixels, checked geometry)."""
    policy = SpacingPolicy(settings.preprocessing.spacing_policy)
    selection = workspace.read_selection()
    record: dict[str, object] = {}
    for role in Role:
        volume = convert_series(selection.files(role), policy)
        write_volume(workspace, role, volume)
        record[role.value] = volume.as_record()
    return record
