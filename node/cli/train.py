"""``segnode train``: train the paper's network on BraTS-style case folders.

A thin entry point: each option is a field of
:class:`segnode.pipeline.training.config.TrainConfig` under the same name (``--init-filters``
is ``init_filters``; the older short spellings ``--filters``, ``--lr``, ``--root``,
``--foreground-crops``, ``--max-steps``, ``--note``, ``--cache`` and ``--out`` still work).
It prints one line per step and reports the model folder. ``--init-weights`` takes a model
folder or a model id in the registry of ``--config``/``--data-dir``, as ``segnode predict
--model`` does. Everything else lives in ``segnode.pipeline.training`` so it can be tested and
reused without a command line.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from segnode.config.errors import SegnodeError
from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, settings_for
from segnode.node.cli.progress import StepBar
from segnode.pipeline.training.augmentation import PAPER_CROP

if TYPE_CHECKING:
    from segnode.pipeline.training.checkpoints import InitWeightsReport

def _describe_init(init: InitWeightsReport) -> str:
    return (
        f"initial weights: model {init.model_id} (sha256 {init.weights_sha256[:12]}), "
        f"{init.loaded} tensors loaded; {len(init.missing)} missing (start fresh): "
        f"{', '.join(init.missing) or 'none'}; {len(init.unexpected)} unexpected (not loaded): "
        f"{', '.join(init.unexpected) or 'none'}"
    )


def train(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", "--out", help="Run folder: checkpoint, log, model/.")
    ],
    cases: Annotated[
        list[Path] | None,
        typer.Option("--case", help="A labelled case folder (repeatable).", file_okay=False),
    ] = None,
    data_roots: Annotated[
        list[Path] | None,
        typer.Option(
            "--data-root",
            "--root",
            help="Folder searched for labelled cases (repeatable).",
            file_okay=False,
        ),
    ] = None,
    val_cases: Annotated[
        list[Path] | None,
        typer.Option(
            "--val-case", help="A labelled validation case folder (repeatable).", file_okay=False
        ),
    ] = None,
    val_every: Annotated[
        int, typer.Option("--val-every", help="Validate after every N-th epoch and the last.")
    ] = 1,
    epochs: Annotated[int, typer.Option(help="Epochs (each case once per epoch).")] = 300,
    crop: Annotated[
        tuple[int, int, int],
        typer.Option(help="Training crop X Y Z (multiples of 16 with the VAE)."),
    ] = PAPER_CROP,
    init_filters: Annotated[
        int, typer.Option("--init-filters", "--filters", help="32 (paper) or 16.")
    ] = 32,
    vae: Annotated[
        bool, typer.Option("--vae/--no-vae", help="SegResNetVAE (paper) or SegResNet.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed for every random draw.")] = 0,
    foreground_probability: Annotated[
        float,
        typer.Option(
            "--foreground-probability",
            "--foreground-crops",
            help="Share of crops centred on tumour (0 = the paper's uniform crop).",
        ),
    ] = 0.0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run folder's checkpoint.")
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(help="auto (default: CUDA if present), cpu, cuda or cuda:N."),
    ] = None,
    max_steps_per_epoch: Annotated[
        int | None,
        typer.Option("--max-steps-per-epoch", "--max-steps", help="At most N steps per epoch."),
    ] = None,
    fp16_weights: Annotated[
        bool, typer.Option("--fp16-weights", help="Store model.pt in float16.")
    ] = False,
    model_id: Annotated[
        str | None, typer.Option("--model-id", help="Manifest id of the trained model.")
    ] = None,
    learning_rate: Annotated[
        float,
        typer.Option("--learning-rate", "--lr", help="Initial Adam learning rate (paper: 1e-4)."),
    ] = 1e-4,
    init_weights: Annotated[
        str | None,
        typer.Option(
            "--init-weights",
            help=(
                "Start from a model's weights (fine-tuning): a model folder or a model id "
                "(registry of --config/--data-dir, or built-in). The segmentation path must "
                "load fully; the VAE branch starts fresh. Ignored with --resume."
            ),
        ),
    ] = None,
    training_data_note: Annotated[
        str,
        typer.Option(
            "--training-data-note", "--note", help="Appended to the manifest's training_data."
        ),
    ] = "",
    recipe: Annotated[
        str | None,
        typer.Option(
            help=(
                "A named recipe (pipeline/training/recipes.py: paper-vae, paper-novae, "
                "unet-bce-dice, segresnet-bce-dice): it sets network, loss, crop, grid, "
                "crop sampling and learning rate, in place of --init-filters/--vae/--crop/"
                "--learning-rate/--foreground-probability."
            )
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Crops per step.")] = 1,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            "--cache",
            help="Folder for compact brain-cropped copies of the cases (faster reruns).",
        ),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train SegResNetVAE as in Myronenko 2018 and write a model folder with its manifest."""
    try:
        # Imported here: torch and MONAI stay out of every other segnode command.
        from segnode.pipeline.training import trainer
        from segnode.pipeline.training.checkpoints import InitWeightsReport
        from segnode.pipeline.training.config import TrainConfig
        from segnode.pipeline.training.recipes import get_recipe

        settings = settings_for(config, data_dir)
        init_folder = None
        if init_weights is not None:
            from segnode.pipeline.model.registry import node_registry

            init_folder = node_registry(settings.storage.data_dir).resolve(init_weights)
        chosen = None
        if recipe is not None:
            try:
                chosen = get_recipe(recipe)
            except KeyError as exc:
                raise typer.BadParameter(str(exc.args[0]), param_hint="--recipe") from exc
        run = TrainConfig(
            out_dir=out_dir,
            cases=tuple(cases or ()),
            data_roots=tuple(data_roots or ()),
            val_cases=tuple(val_cases or ()),
            val_every=val_every,
            epochs=epochs,
            crop=crop,
            init_filters=init_filters,
            vae=vae,
            seed=seed,
            foreground_probability=foreground_probability,
            resume=resume,
            device=device,
            max_steps_per_epoch=max_steps_per_epoch,
            fp16_weights=fp16_weights,
            model_id=model_id,
            training_data_note=training_data_note,
            learning_rate=learning_rate,
            init_weights=init_folder,
            batch_size=batch_size,
            cache_dir=cache_dir,
        )
        if chosen is not None:
            run = dataclasses.replace(
                run,
                crop=chosen.crop,
                network=chosen.architecture,
                bce_weight=chosen.bce_weight,
                spacing_mm=chosen.spacing_mm,
                foreground_probability=chosen.foreground_probability,
                learning_rate=chosen.learning_rate,
                recipe=chosen.name,
            )
        bar = None if quiet else StepBar(None, f"train {recipe or ''}".strip())
        try:
            result = trainer.train(run, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    except SegnodeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    summary = {
        "model_dir": str(result.model_dir),
        "manifest": str(result.manifest_path),
        "log": str(result.log_path),
        "first_epoch": result.first_epoch,
        "epochs_completed": result.epochs_completed,
        "metrics": result.metrics,
        "init_weights": result.init_weights,
    }
    if as_json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        if result.init_weights is not None:
            typer.echo(_describe_init(InitWeightsReport.from_dict(result.init_weights)))
        typer.echo(f"model folder: {result.model_dir} ({result.epochs_completed} epochs)")


def register(app: typer.Typer) -> None:
    """Add ``train`` to the segnode CLI (node/cli/__init__.py calls this)."""
    app.command("train")(train)
