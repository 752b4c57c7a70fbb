"""``segnode evaluate``: Dice and HD95 of predicted label maps against reference labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segnode.config.errors import SegnodeError
from segnode.node.cli.options import JsonOption


def evaluate(
    prediction: Annotated[Path, typer.Argument(help="Predicted label map, or a folder of them.")],
    labels: Annotated[Path, typer.Argument(help="Reference label map, or a folder (by case id).")],
    as_json: JsonOption = False,
) -> None:
    """Score predictions per region (WT, TC, ET) the BraTS way; either label convention."""
    try:
        from segnode.pipeline.training.evaluation import evaluate_paths  # MONAI: only when needed

        report = evaluate_paths(prediction, labels)
    except SegnodeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(report.to_json() if as_json else report.format_table())


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to a typer app (node/cli/__init__.py wires it into ``segnode``)."""
    app.command("evaluate")(evaluate)
