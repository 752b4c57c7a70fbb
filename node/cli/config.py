"""``segnode check-config``: validate the configuration and print it as JSON."""

from __future__ import annotations

import typer

from segnode.node.cli.options import ConfigOption, settings_or_exit


def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration and print it as JSON."""
    settings = settings_or_exit(config)
    typer.echo(settings.model_dump_json(indent=2))


def register(app: typer.Typer) -> None:
    """Add ``check-config`` to the segnode app."""
    app.command("check-config")(check_config)
