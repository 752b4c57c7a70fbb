"""``segnode cv``: five-fold cross-validation of one training recipe (docs/models.md).

Trains one model per fold on the other folds, segments the held-out cases as ``segnode
predict`` would, tunes the post-processing on those predictions and writes ``cv_report.json``
(Dice/HD95 mean ± sd per region, per case, the label confusion matrix). Resumable: folds with
a finished model are not trained again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from segnode.config.errors import SegnodeError
from segnode.node.cli.options import JsonOption


def cv(
    root: Annotated[Path, typer.Option("--root", help="Folder of labelled BraTS cases.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: fold models and report.")],
    recipe: Annotated[str, typer.Option(help="Recipe name (pipeline/training/recipes.py).")],
    steps: Annotated[int, typer.Option(help="Optimiser steps per fold model.")] = 300,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Crops per step.")] = 2,
    cache: Annotated[
        Path | None, typer.Option(help="Compact-case cache folder (default: OUT/../cache).")
    ] = None,
    fold: Annotated[
        list[int] | None, typer.Option("--fold", help="Only this fold (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed; fold k trains with seed + k.")] = 0,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="8-flip TTA when predicting.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Cross-validate a recipe on the fixed five folds and report per-region scores."""
    from segnode.node.cli.progress import StepBar
    from segnode.pipeline.training.cross_validation import CvConfig, run_cross_validation
    from segnode.pipeline.training.folds import FOLDS
    from segnode.pipeline.training.recipes import get_recipe

    try:
        chosen = get_recipe(recipe)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from exc
    folds = tuple(fold) if fold else None
    count = len(folds) if folds else len(FOLDS)
    # Total unknown until the first fold's epochs are counted: the bar takes it from its first
    # report and grows per fold.
    bar = StepBar(None, f"cv {recipe} ({count} folds)")
    config = CvConfig(
        recipe=chosen,
        data_root=root,
        out_dir=out,
        steps=steps,
        batch_size=batch_size,
        cache_dir=cache if cache is not None else out.parent / "cache",
        seed=seed,
        only_folds=folds,
        tta=tta,
    )
    try:
        report = run_cross_validation(
            config, progress=bar, on_fold=lambda k, text: bar.restart(f"fold {k}: {text}")
        )
    except (SegnodeError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        bar.close()
    if as_json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    summary = report.summary()
    typer.echo(f"recipe {recipe}, {steps} steps per fold, post-processing {report.postprocessing}")
    for region, row in summary.items():
        typer.echo(
            f"  {region.upper():3s} Dice {row['dice_mean']:.3f} ± {row['dice_sd']:.3f}   "
            f"HD95 {row['hd95_mean']:.1f} ± {row['hd95_sd']:.1f} mm"
        )


def register(app: typer.Typer) -> None:
    app.command("cv")(cv)
