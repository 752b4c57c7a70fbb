"""Step ``select``: find T1, T1c, T2 and FLAIR among the study's series from their headers."""

from __future__ import annotations

from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from segnode.pipeline.errors import SelectionError
from segnode.pipeline.selection import ALL_ROLES, identify_sequences, require_roles
from segnode.pipeline.sequence_facts import facts_from_datasets
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace


def run(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """Read every series' headers, assign the roles, write ``selection.json``."""
    inputs = workspace.read_json("inputs.json")
    files_by_series: dict[str, list[str]] = {}
    facts = []
    for entry in inputs["series"]:
        headers = []
        for name in entry["files"]:
            try:
                headers.append(dcmread(name, stop_before_pixels=True))
            except (InvalidDicomError, OSError, ValueError) as exc:
                raise SelectionError(f"cannot read {name}: {exc}") from exc
        if headers:
            facts.append(facts_from_datasets(headers))
            files_by_series[entry["series_instance_uid"]] = entry["files"]
    assignment = identify_sequences(facts, settings.selection)
    require_roles(assignment, ALL_ROLES)
    roles = {
        role.value: {
            "series_instance_uid": candidate.facts.series_instance_uid,
            "description": candidate.facts.description,
            "files": files_by_series[candidate.facts.series_instance_uid],
        }
        for role, candidate in assignment.chosen.items()
    }
    workspace.write_json("selection.json", {"roles": roles, "record": assignment.as_record()})
    return {
        "roles": {role: entry["series_instance_uid"] for role, entry in roles.items()},
        "candidates": assignment.as_record(),
    }
