"""Step ``write``: DICOM-SEG, SR (and SC/PDF when a destination wants them) in the T1c's study."""

from __future__ import annotations

from typing import Any

from segnode.pipeline.model.labels import LabelConvention
from segnode.pipeline.outputs.provenance import provenance_from
from segnode.pipeline.outputs.writer import write_results
from segnode.pipeline.selection import Role
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace, selected_files
from segnode.pipeline.workspace_images import read_image, read_volume

ET_LABEL = {LabelConvention.BRATS_2021: 4, LabelConvention.BRATS_2023: 3}


def run(workspace: Workspace, settings: StepSettings) -> dict[str, Any]:
    """Write the result objects into ``outputs/`` and their list into ``results.json``."""
    inference = workspace.read_json("inference/record.json")
    t1c = read_volume(workspace, Role.T1C)
    workspace.outputs_dir.mkdir(parents=True, exist_ok=True)
    results = write_results(
        source_files=selected_files(workspace, Role.T1C),
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
