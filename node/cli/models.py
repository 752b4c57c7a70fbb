"""``segnode models``: import, list, show and verify the segmentation models a node may run.

The registry lives at ``<data_dir>/models``; ``--data-dir`` overrides the configured
``storage.data_dir`` as it does for the other commands. Options come from
``segnode.node.cli.options``, shared with every command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from segnode.pipeline.model.registry import ModelRegistry

from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, settings_or_exit
from segnode.pipeline.model.errors import ModelError
from segnode.pipeline.model.manifest import MANIFEST_FILE, ModelManifest

models_app = typer.Typer(
    no_args_is_help=True, help="Segmentation models (the registry under <data_dir>/models)."
)


def register(app: typer.Typer) -> None:
    """Add the ``models`` sub-command group to the segnode app."""
    app.add_typer(models_app, name="models")


def _registry(config: Path | None, data_dir: Path | None) -> ModelRegistry:
    # Imported here: the registry loads torch, which other segnode commands never need.
    from segnode.pipeline.model.registry import node_registry

    return node_registry(settings_or_exit(config, data_dir).storage.data_dir)


def _fail(exc: ModelError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _channels(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


def _summary(manifest: ModelManifest) -> str:
    return (
        f"{manifest.id}  {manifest.name} {manifest.version}  "
        f"in: {','.join(manifest.input_channels)}  out: {','.join(manifest.output_channels)}  "
        f"{manifest.architecture.name}/{manifest.architecture.init_filters}  "
        f"sha256 {manifest.weights_sha256[:12]}  ({manifest.source})"
    )


@models_app.command("import")
def import_model(
    path: Annotated[
        Path, typer.Argument(help="A MONAI bundle (folder or .zip) or a segnode model folder.")
    ],
    model_id: Annotated[
        str | None, typer.Option("--id", help="Register under this id (default: from the model).")
    ] = None,
    input_channels: Annotated[
        str | None,
        typer.Option(
            "--input-channels",
            help="Bundle input channels in order, e.g. t1c,t1,t2,flair (overrides metadata).",
        ),
    ] = None,
    output_channels: Annotated[
        str | None,
        typer.Option("--output-channels", help="Bundle output regions in order, e.g. tc,wt,et."),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Verify a model and copy it into the registry."""
    registry = _registry(config, data_dir)
    try:
        if path.is_dir() and (path / MANIFEST_FILE).is_file():
            manifest = registry.add_folder(path, model_id)
        else:
            manifest = registry.import_monai_bundle(
                path,
                model_id,
                input_channels=_channels(input_channels),
                output_channels=_channels(output_channels),
            )
    except ModelError as exc:
        raise _fail(exc) from exc
    typer.echo(f"imported {_summary(manifest)}")


@models_app.command("pack")
def pack_model(
    cv_dir: Annotated[Path, typer.Argument(help="A finished `segnode cv` run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    model_id: Annotated[str, typer.Option("--id", help="Id of the new model.")],
    version: Annotated[str, typer.Option(help="Version of the new model.")] = "1.0.0",
    note: Annotated[str, typer.Option(help="Appended to training_data.")] = "",
) -> None:
    """Ship a cross-validation run's fold models as one ensemble model folder (float16)."""
    from segnode.pipeline.training.ensemble import pack_cv_run

    try:
        manifest = pack_cv_run(cv_dir, out, model_id=model_id, version=version, training_note=note)
    except ModelError as exc:
        raise _fail(exc) from exc
    typer.echo(_summary(manifest))


@models_app.command("list")
def list_models(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List the registered models."""
    registry = _registry(config, data_dir)
    try:
        manifests = registry.list()
    except ModelError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps([m.model_dump(mode="json") for m in manifests], indent=2))
        return
    for manifest in manifests:
        typer.echo(_summary(manifest))
    if not manifests:
        typer.echo(f"no models in {registry.root}", err=True)


@models_app.command("show")
def show_model(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print a model's manifest as JSON."""
    registry = _registry(config, data_dir)
    try:
        manifest = registry.get(model_id)
    except ModelError as exc:
        raise _fail(exc) from exc
    typer.echo(manifest.model_dump_json(indent=2))


@models_app.command("verify")
def verify_model(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    load: Annotated[
        bool, typer.Option("--load", help="Also load the weights into the declared network.")
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Check the weights' sha256 against the manifest (exit status 1 if they differ)."""
    registry = _registry(config, data_dir)
    try:
        checksum = registry.load(model_id).sha256 if load else registry.verify(model_id)
    except ModelError as exc:
        raise _fail(exc) from exc
    typer.echo(f"OK {model_id} sha256 {checksum}" + (" (loads)" if load else ""))
