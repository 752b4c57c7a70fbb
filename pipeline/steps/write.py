"""Step ``write``: the quality checks, then DICOM-SEG, SR (and SC/PDF when a destination wants
them) in the T1c's study, each showing the quality flags; and a SEG on each series registration
moved against the T1c (``[result_series] registered_series_segs``)."""

from __future__ import annotations

from segnode.pipeline.outputs.provenance import provenance_from
from segnode.pipeline.outputs.writer import write_results
from segnode.pipeline.quality.assess import assess, note_own_segmentations
from segnode.pipeline.series_labels import registered_series_labels
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Results, Workspace
from segnode.pipeline.workspace_images import read_image, read_volume
from segnode.vocabulary import Role


def run(workspace: Workspace, settings: StepSettings) -> dict[str, object]:
    """Write the result objects into ``outputs/`` and their list into ``results.json``."""
    inference = workspace.read_inference()
    t1c = read_volume(workspace, Role.T1C)
    quality = assess(workspace, settings.quality)
    registered, registered_record = (
        registered_series_labels(workspace, settings.result_series, quality.motion)
        if "seg" in settings.outputs
        else ([], {})
    )
    quality = note_own_segmentations(quality, [series.role for series in registered])
    workspace.write_quality(quality)
    workspace.outputs_dir.mkdir(parents=True, exist_ok=True)
    written = write_results(
        source_files=workspace.read_selection().files(Role.T1C),
        slices=t1c.slices,
        labels=read_image(workspace, workspace.source_labels_path),
        convention_et_label=inference.label_convention.et_label,
        provenance=provenance_from(inference),
        settings=settings.result_series,
        outputs=settings.outputs,
        out_dir=workspace.outputs_dir,
        quality=quality,
        registered=registered,
        preview_dir=workspace.preview_dir,
    )
    results = Results.model_validate(written.as_record())
    workspace.write_results(results)
    return {
        **results.model_dump(mode="json"),
        "quality": quality.model_dump(mode="json"),
        "registered_series": registered_record,
    }
