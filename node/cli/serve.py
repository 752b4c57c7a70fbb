"""``segnode serve``: run the node (listener, completion monitor, job runner) until stopped."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from segnode.node.cli.options import ConfigOption, DataDirOption, settings_or_exit
from segnode.node.logs import configure_logging


def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="DICOM port.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Node AE title.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run the DICOM listener, the completion monitor and the job runner until stopped."""
    listener = {
        key: value
        for key, value in (("host", host), ("port", port), ("ae_title", ae_title))
        if value is not None
    }
    settings = settings_or_exit(config, data_dir, {"listener": listener} if listener else {})
    configure_logging(settings.logging.level, settings.logging.format)
    # Imported after logging is set up: a library's import-time warning becomes a JSON line.
    from segnode.node.service import serve_forever

    # Everything the node and its workers write (job folders included, which are not
    # made through FileStore) is private: owner only, or group-readable with file_group.
    os.umask(0o027 if settings.storage.file_group else 0o077)
    serve_forever(settings)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the segnode app."""
    app.command()(serve)
