"""Step ``select``: find T1, T1c, T2 and FLAIR among the study's series from their headers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from segnode.pipeline.errors import SelectionError
from segnode.pipeline.selection import RoleAssignment, identify_sequences, require_roles, stand_ins
from segnode.pipeline.sequence_facts import facts_from_datasets
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import SelectedSeries, Selection, Workspace, jsonable
from segnode.vocabulary import Role


def selection_of(
    assignment: RoleAssignment,
    substitutes: Mapping[Role, Role],
    files_by_series: Mapping[str, tuple[Path, ...]],
) -> Selection:
    """The job's selection: each role's chosen series, a stand-in's series under the role it
    stands in for too, and the assignment's record."""
    chosen = {
        **assignment.chosen,
        **{missing: assignment.chosen[stand_in] for missing, stand_in in substitutes.items()},
    }
    return Selection(
        roles={
            role: SelectedSeries(
                series_instance_uid=chosen[role].facts.series_instance_uid,
                description=chosen[role].facts.description,
                files=files_by_series[chosen[role].facts.series_instance_uid],
            )
            for role in Role
            if role in chosen
        },
        substitutes=dict(substitutes),
        record=jsonable(assignment.as_record()),
    )


def run(workspace: Workspace, settings: StepSettings) -> dict[str, object]:
    """Read every series' headers, assign the roles, write ``selection.json``."""
    files_by_series: dict[str, tuple[Path, ...]] = {}
    facts = []
    for series in workspace.read_inputs().series:
        headers = []
        for path in series.files:
            try:
                headers.append(dcmread(path, stop_before_pixels=True))
            except (InvalidDicomError, OSError, ValueError) as exc:
                raise SelectionError(f"cannot read {path}: {exc}") from exc
        if headers:
            facts.append(facts_from_datasets(headers))
            files_by_series[series.series_instance_uid] = series.files
    assignment = identify_sequences(facts, settings.selection)
    substitutes = stand_ins(assignment, settings.selection.stand_in_for)
    require_roles(assignment, [role for role in Role if role not in substitutes])
    selection = selection_of(assignment, substitutes, files_by_series)
    workspace.write_selection(selection)
    return {
        "roles": {role.value: series.series_instance_uid for role, series in selection.roles.items()},
        "substitutes": {missing.value: stand_in.value for missing, stand_in in substitutes.items()},
        "candidates": selection.record,
    }
