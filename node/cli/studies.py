"""``segnode studies``: received studies with their completion state, and the quarantine count.

Read-only: it opens the database without migrating (``open_sessions``); the rows come from
``segnode.storage.queries``, this module only formats them.
"""

from __future__ import annotations

import json

import typer

from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, open_sessions
from segnode.storage.database import read_only_session
from segnode.storage.queries import list_studies, quarantined_count


def studies(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List received studies with their completion state."""
    sessions = open_sessions(config, data_dir)
    with read_only_session(sessions) as session:
        rows = list_studies(session)
        quarantined = quarantined_count(session)
    if as_json:
        entries = [row.to_json() for row in rows]
        typer.echo(json.dumps({"studies": entries, "quarantined": quarantined}, indent=2))
        return
    for row in rows:
        typer.echo(
            f"{row.id:>5}  {row.state:<10} {row.series:>3} series "
            f"{row.instances:>6} instances  {row.study_instance_uid}\n"
            f"       {row.reason}"
        )
    typer.echo(f"{quarantined} instance(s) in quarantine")


def register(app: typer.Typer) -> None:
    """Add ``studies`` to the segnode app."""
    app.command()(studies)
