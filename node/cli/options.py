"""Options and settings loading shared by every ``segnode`` command.

One definition, so ``--config`` and ``--data-dir`` mean the same in every command module
(``node/cli/__init__.py`` and ``node/cli/*`` both import from here; nothing imports ``segnode.node.cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.errors import ConfigError
from segnode.config.settings import Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (default: config/node.toml)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory: store, SQLite database and models/ live under DIR."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
"""``--json`` of every command that can print JSON; the parameter is always ``as_json``."""


def settings_for(
    config: Path | None, data_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Settings from ``--config``, with ``--data-dir`` and further overrides applied.

    Raises:
        ConfigError: naming the invalid key.
    """
    merged: dict[str, Any] = dict(overrides or {})
    if data_dir is not None:
        merged["storage"] = {**merged.get("storage", {}), "data_dir": str(data_dir)}
    return load_settings(config, merged)


def settings_or_exit(
    config: Path | None, data_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """:func:`settings_for`, printing the error and exiting 2 on an invalid configuration."""
    try:
        return settings_for(config, data_dir, overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def open_sessions(config: Path | None, data_dir: Path | None) -> sessionmaker[Session]:
    """Sessions on the configured database, for the commands that read or change jobs.

    Never migrates: only ``serve`` and ``db upgrade`` change the schema, so an operator's
    ``segnode jobs list`` cannot migrate a production database under a running node of
    another version. A schema that is behind (or no database) prints the error, which
    names ``segnode db upgrade``, and exits 1.
    """
    from segnode.storage.database import make_session_factory, open_database
    from segnode.storage.errors import DatabaseSchemaError

    settings = settings_or_exit(config, data_dir)
    try:
        engine = open_database(settings.storage, migrate=False)
    except DatabaseSchemaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    return make_session_factory(engine)
