"""Step ``select``: find T1, T1c, T2 and FLAIR among the study's series from their headers."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from segnode.pipeline.errors import SelectionError
from segnode.pipeline.selection import identify_sequences, require_roles, stand_ins
from segnode.pipeline.sequence_facts import facts_from_datasets
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import SelectedSeries, Selection, Workspace, jsonable
from segnode.vocabulary import Role


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
    chosen = {
        **assignment.chosen,
        **{missing: assignment.chosen[stand_in] for missing, stand_in in substitutes.items()},
    }
    selection = Selection(
        roles={
            role: SelectedSeries(
                series_instance_uid=candidate.facts.series_instance_uid,
                description=candidate.facts.description,
                files=files_by_series[candidate.facts.series_instance_uid],
            )
            for role, candidate in sorted(chosen.items(), key=lambda item: list(Role).index(item[0]))
        },
        substitutes=substitutes,
        record=jsonable(assignment.as_record()),
    )
    workspace.write_selection(selection)
    return {
        "roles": {role.value: series.series_instance_uid for role, series in selection.roles.items()},
        "substitutes": {missing.value: stand_in.value for missing, stand_in in substitutes.items()},
        "candidates": selection.record,
    }
