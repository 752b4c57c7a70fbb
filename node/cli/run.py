"""``segnode run``: process a study from a local folder, without networking or a database.

The same pipeline steps as a node's job (``segnode.pipeline.steps``), run one after the other in
this process on a job folder under ``--out``; the DICOM results are copied next to it.
For trying a site's data or a model before a node is connected to the PACS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, settings_or_exit
from segnode.vocabulary import OUTPUT_KINDS, OutputKind


def _parse_outputs(value: str) -> list[OutputKind]:
    asked = {part.strip() for part in value.split(",") if part.strip()}
    if not asked or asked - set(OUTPUT_KINDS):
        raise typer.BadParameter(f"choose from {', '.join(OUTPUT_KINDS)} (got {value!r})")
    return [kind for kind in OUTPUT_KINDS if kind in asked]


def run(
    dicom_dir: Annotated[Path, typer.Argument(help="Folder with the study's DICOM files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the results.")],
    outputs: Annotated[
        str, typer.Option("--outputs", help="Comma-separated: seg, sr, sc, pdf.")
    ] = "seg,sr",
    model: Annotated[str | None, typer.Option("--model", help="Model id (default: model.default).")] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="StudyInstanceUID, when the folder holds several.")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Segment a study from a folder and write DICOM-SEG, SR (and SC/PDF) into OUT."""
    from segnode.node.cli.study_folder import read_headers
    from segnode.pipeline.errors import PipelineError
    from segnode.pipeline.steps import STEP_ORDER, StepSettings, run_step
    from segnode.pipeline.workspace import Inputs, Workspace

    wanted = _parse_outputs(outputs)
    overrides = {"model": {"default": model}} if model else {}
    settings = settings_or_exit(config, data_dir, overrides)
    if not dicom_dir.is_dir():
        typer.echo(f"error: {dicom_dir} is not a folder", err=True)
        raise typer.Exit(2)
    studies, unreadable = read_headers(dicom_dir)
    if study is not None:
        studies = {uid: series for uid, series in studies.items() if uid == study}
    if len(studies) != 1:
        found = ", ".join(sorted(studies)) or "none"
        typer.echo(f"error: need exactly one study in {dicom_dir} (found: {found}); use --study", err=True)
        raise typer.Exit(2)
    [(study_uid, series)] = studies.items()
    workspace = Workspace(out.resolve() / "work")
    workspace.write_inputs(
        Inputs.of(study_uid, {uid: [path for path, _ in items] for uid, items in series.items()})
    )
    step_settings = StepSettings.from_settings(settings, wanted)
    steps: dict[str, object] = {}
    for name in STEP_ORDER:
        if not as_json:
            typer.echo(f"{name} ...", err=True)
        try:
            record = run_step(name, workspace.root, step_settings)
        except PipelineError as exc:
            typer.echo(f"error: {name} failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        steps[name] = {"step_s": record.get("step_s")}
    results = workspace.read_results()
    written = []
    for obj in results.objects:
        target = out / obj.path.name
        shutil.copyfile(obj.path, target)
        written.append(obj.model_copy(update={"path": target}))
    volumes_ml = {
        region.value: round(volume.ml, 3) for region, volume in results.volumes.regions.items()
    }
    quality = workspace.read_quality()
    summary = {
        "study_instance_uid": study_uid,
        "unreadable_files": unreadable,
        "objects": [obj.model_dump(mode="json") for obj in written],
        "volumes_ml": volumes_ml,
        "review_recommended": quality.review_recommended,
        "quality_flags": [flag.model_dump(mode="json", exclude_none=True) for flag in quality.flags],
        "steps": steps,
        "work_dir": str(workspace.root),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for obj in written:
        typer.echo(f"wrote {obj.kind:<4} {obj.path}")
    for region, volume in volumes_ml.items():
        typer.echo(f"{region:>4} {volume:8.2f} ml")
    for line in quality.lines():
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
