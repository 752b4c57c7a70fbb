"""The job's pipeline steps, each a function of a job folder and settings (worker side).

Importing this module loads torch, MONAI, deepbet and highdicom: only worker processes and
``segnode run`` do; the node reaches these steps through ``pipeline.step_interface``.

Why this shape: a step reads the files the previous step wrote into the job's
:class:`~pipeline.workspace.Workspace`, writes its own, and returns a small JSON-able
record of its inputs, decisions and outputs for the job's event log. Nothing else passes
between steps (no database, no network, no shared memory), so the node's local worker
pool runs them today and a distributed engine can run the same functions later, and a
killed job resumes at the first step whose outputs were not recorded as finished.

Errors: :class:`~pipeline.errors.PipelineError` subclasses are permanent (the same input
fails the same way: a missing FLAIR, a corrupt model); anything else (``OSError``, a dead
worker) may be transient and is the caller's to classify.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from pipeline.conversion import SpacingPolicy, convert_series
from pipeline.errors import SelectionError
from pipeline.model.labels import LabelConvention
from pipeline.model.segmentation import SegmentationRequest, segment
from pipeline.outputs.provenance import AlgorithmProvenance
from pipeline.outputs.writer import write_results
from pipeline.preprocessing import CHANNEL_ORDER, labels_to_source, preprocess
from pipeline.selection import ALL_ROLES, Role, identify_sequences, require_roles
from pipeline.sequence_facts import facts_from_datasets
from pipeline.step_interface import StepSettings
from pipeline.workspace import Workspace
from pipeline.workspace_images import (
    read_image,
    read_preprocessed,
    read_volume,
    write_image,
    write_preprocessed,
    write_volume,
)

ALGORITHM_NAME = "segnode"
ET_LABEL = {LabelConvention.BRATS_2021: 4, LabelConvention.BRATS_2023: 3}


def segnode_version() -> str:
    try:
        return version("segnode")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


# -- steps ---------------------------------------------------------------------------------


def select_sequences(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """Find T1, T1c, T2 and FLAIR among the study's series from their headers."""
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


def _selected_files(workspace: Workspace, role: Role) -> list[Path]:
    return [Path(name) for name in workspace.read_json("selection.json")["roles"][role.value]["files"]]


def convert_volumes(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """Each selected series becomes a volume in patient space."""
    policy = SpacingPolicy(settings.preprocessing.spacing_policy)
    record: dict[str, Any] = {}
    for role in ALL_ROLES:
        volume = convert_series(_selected_files(workspace, role), policy)
        write_volume(workspace, role, volume)
        record[role.value] = volume.as_record()
    return record


def preprocess_study(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """Brain extraction, co-registration, 1 mm grid, normalisation (the BraTS convention)."""
    volumes = {role: read_volume(workspace, role) for role in CHANNEL_ORDER}
    study = preprocess(volumes, settings.preprocessing)
    write_preprocessed(workspace, study)
    return dict(study.record)


def infer_labels(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """The network(s) on the preprocessed grid, labels mapped back onto the T1c series."""
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


def provenance_from(inference_record: dict[str, Any]) -> AlgorithmProvenance:
    """The algorithm and model(s) that made the labels, for every result object."""
    models = inference_record["models"]
    primary = models[0]
    return AlgorithmProvenance(
        algorithm_name=ALGORITHM_NAME,
        algorithm_version=segnode_version(),
        model_id="+".join(m["id"] for m in models),
        model_version=primary["version"],
        model_sha256=primary["sha256"],
    )


def write_objects(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """DICOM-SEG, SR (and SC/PDF when a destination wants them) in the T1c's study."""
    inference = workspace.read_json("inference/record.json")
    t1c = read_volume(workspace, Role.T1C)
    workspace.outputs_dir.mkdir(parents=True, exist_ok=True)
    results = write_results(
        source_files=_selected_files(workspace, Role.T1C),
        slices=t1c.slices,
        labels=read_image(workspace, "inference/labels_source.mha"),
        convention_et_label=ET_LABEL[LabelConvention(inference["label_convention"])],
        provenance=provenance_from(inference),
        settings=settings.outputs,
        kinds=settings.output_kinds,
        out_dir=workspace.outputs_dir,
    )
    record = results.as_record()
    workspace.write_json("results.json", record)
    return record


Step = Callable[[Workspace, StepSettings], dict[str, Any]]

#: Job state name -> the step that runs in that state (``pipeline.step_interface.STEP_NAMES``).
STEPS: dict[str, Step] = {
    "selecting": select_sequences,
    "converting": convert_volumes,
    "preprocessing": preprocess_study,
    "inferring": infer_labels,
    "writing": write_objects,
}
