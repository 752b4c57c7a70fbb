"""``segnode db``: the database schema (create or migrate it; only this and ``serve`` migrate)."""

from __future__ import annotations

import typer

from segnode.node.cli.options import ConfigOption, DataDirOption, settings_or_exit

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


def register(app: typer.Typer) -> None:
    """Add the ``db`` command group to the segnode app."""
    app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Create or migrate the database schema to the newest version."""
    from segnode.storage.database import current_revision, open_database

    engine = open_database(settings_or_exit(config, data_dir).storage, migrate=True)
    typer.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()
