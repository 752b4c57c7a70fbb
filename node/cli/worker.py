"""``segnode worker``: run job steps from the broker's queues (``jobs.executor = "celery"``)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from segnode.node.cli.options import ConfigOption, DataDirOption, settings_or_exit
from segnode.node.logs import configure_logging


def worker(
    config: ConfigOption = None,
    queues: Annotated[
        str,
        typer.Option(
            help="Resources this worker serves, comma-separated: cpu (selection, conversion, "
            "preprocessing, writing) and/or gpu (inference)."
        ),
    ] = "cpu,gpu",
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Steps this worker runs at the same time.")
    ] = 1,
    name: Annotated[
        str | None,
        typer.Option(help="Worker name (dashboard, claims); default segnode-<queues>@<host>."),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run pipeline steps published by the node, on this machine, until stopped."""
    settings = settings_or_exit(config, data_dir, {})
    configure_logging(settings.logging.level, settings.logging.format)
    # Imported after logging is set up (Celery and the pipeline import a lot).
    from segnode.node.distributed.worker import WorkerStartError, run_worker

    os.umask(0o027 if settings.storage.file_group else 0o077)
    resources = [part.strip() for part in queues.split(",") if part.strip()]
    try:
        status = run_worker(settings, resources, concurrency, name)
    except WorkerStartError as exc:
        typer.echo(f"segnode worker: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(status)


def register(app: typer.Typer) -> None:
    """Add ``worker`` to the segnode app."""
    app.command()(worker)
