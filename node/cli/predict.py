"""``segnode predict``: segment one preprocessed BraTS-style case folder into a NIfTI label map.

Thin: options in, ``segnode.pipeline.training.prediction.predict_case`` does the work, a summary
out. The model runs as the node runs it: ``[model]`` of ``--config`` gives the device, TTA and
post-processing, and each option given here overrides its ``[model]`` key (``--device`` is
``model.device``); where ``[model]`` leaves a post-processing value unset, the model's tuned
value applies (``postprocess.resolve_postprocessing``). ``--model`` is a model folder or an id in
the configured registry (``<data_dir>/models`` and the built-in models).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from segnode.pipeline.training.prediction import PredictionSummary

from segnode.config.errors import SegnodeError
from segnode.node.cli.options import ConfigOption, DataDirOption, settings_for
from segnode.pipeline.model.errors import ModelNotFoundError
from segnode.vocabulary import LabelConvention


def describe(summary: PredictionSummary) -> str:
    """Console summary: where the labels went, how they were made, what post-processing did."""
    record = summary.postprocessing
    counts = record.voxel_counts
    window = "x".join(map(str, summary.roi_size)) if summary.roi_size else None
    lines = [
        f"wrote {summary.output} (labels 1 NCR, 2 ED, {record.convention.et_label} ET; "
        f"BraTS {record.convention.value} convention)",
        f"model {summary.model_id} (sha256 {summary.weights_sha256[:12]}), "
        f"TTA {'on' if summary.tta else 'off'}, "
        + (f"sliding window {window}" if window else "full volume")
        + f", {summary.device} ({summary.backend}), {summary.inference_s:.1f} s",
        f"voxels: NCR {counts['ncr']}, ED {counts['ed']}, ET {counts['et']}",
    ]
    if record.min_component_voxels:
        lines.append(
            f"removed {record.components_removed} tumour components smaller than "
            f"{record.min_component_voxels} voxels ({record.component_voxels_removed} voxels)"
        )
    if record.et_relabelled_as_ncr:
        lines.append(
            f"ET of {record.et_voxels_found} voxels (< {record.et_min_voxels}) relabelled as NCR"
        )
    return "\n".join(lines)


def predict(
    case_dir: Annotated[
        Path, typer.Argument(help="Preprocessed case folder: t1, t1c, t2, FLAIR as NIfTI.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Label map to write (.nii.gz).")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Model id in the registry, or a model folder (default: model.default)."
        ),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    labels: Annotated[
        LabelConvention, typer.Option("--labels", help="Label values: 2021 (ET=4) or 2023 (ET=3).")
    ] = LabelConvention.BRATS_2021,
    device: Annotated[
        str | None,
        typer.Option(help="auto (GPU when present), cpu, cuda or cuda:N (default: model.device)."),
    ] = None,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="Average over 8 axis flips (8x slower; default: model.tta).",
        ),
    ] = None,
    roi: Annotated[
        tuple[int, int, int] | None,
        typer.Option(help="Sliding-window size X Y Z (multiples of 8); default: by volume size."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Region probability threshold (default: model.threshold)."),
    ] = None,
    et_threshold: Annotated[
        float | None,
        typer.Option(help="Enhancing-tumour threshold (default: model.et_threshold)."),
    ] = None,
    et_min_voxels: Annotated[
        int | None,
        typer.Option(help="A smaller ET becomes NCR (0: never; default: model.et_min_voxels)."),
    ] = None,
    min_component_voxels: Annotated[
        int | None,
        typer.Option(
            help="Smaller tumour components are removed (0: none; default: "
            "model.min_component_voxels)."
        ),
    ] = None,
) -> None:
    """Segment a preprocessed case folder into a NIfTI label map (research use only)."""
    options = {
        "device": device,
        "tta": tta,
        "threshold": threshold,
        "et_threshold": et_threshold,
        "et_min_voxels": et_min_voxels,
        "min_component_voxels": min_component_voxels,
    }
    overrides: dict[str, Any] = {"model": {k: v for k, v in options.items() if v is not None}}
    try:
        settings = settings_for(config, data_dir, overrides)
        model_ref = model or settings.model.default
        if not model_ref:
            raise ModelNotFoundError("no --model given and no model.default configured")
        # Imported here: torch and MONAI stay out of every other segnode command.
        from segnode.pipeline.model.registry import node_registry
        from segnode.pipeline.training.prediction import predict_case

        summary = predict_case(
            case_dir,
            out,
            node_registry(settings.storage.data_dir).resolve(model_ref),
            settings.model,
            convention=labels,
            roi_size=roi,
        )
    except SegnodeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(describe(summary))


def register(app: typer.Typer) -> None:
    """Add ``predict`` to a typer app (node/cli/__init__.py wires it into ``segnode``)."""
    app.command("predict")(predict)
