"""Step ``convert``: each selected series becomes a volume in patient space."""

from __future__ import annotations

from typing import Any

from segnode.pipeline.conversion import SpacingPolicy, convert_series
from segnode.pipeline.selection import ALL_ROLES
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace, selected_files
from segnode.pipeline.workspace_images import write_volume


def run(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """Convert the four selected series (SimpleITK/GDCM pixels, checked geometry)."""
    policy = SpacingPolicy(settings.preprocessing.spacing_policy)
    record: dict[str, Any] = {}
    for role in ALL_ROLES:
        volume = convert_series(selected_files(workspace, role), policy)
        write_volume(workspace, role, volume)
        record[role.value] = volume.as_record()
    return record
