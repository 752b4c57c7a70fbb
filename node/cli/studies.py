"""``segnode studies``: received studies with their completion state, and the quarantine count."""

from __future__ import annotations

import json

import typer
from sqlalchemy import func, select

from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, open_sessions
from segnode.storage.models import QuarantinedInstance, Series, Study


def studies(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List received studies with their completion state."""
    sessions = open_sessions(config, data_dir)
    with sessions() as session:
        rows = session.execute(
            select(Study, func.count(Series.id))
            .join(Series, Series.study_id == Study.id, isouter=True)
            .group_by(Study.id)
            .order_by(Study.id)
        ).all()
        entries = [
            {
                "id": study.id,
                "study_instance_uid": study.study_instance_uid,
                "state": study.state,
                "series": count,
                "instances": study.received_instances,
                "last_received_at": study.last_received_at.isoformat(),
                "reason": study.state_reason,
            }
            for study, count in rows
        ]
        quarantined = session.execute(select(func.count(QuarantinedInstance.id))).scalar_one()
    if as_json:
        typer.echo(json.dumps({"studies": entries, "quarantined": quarantined}, indent=2))
        return
    for entry in entries:
        typer.echo(
            f"{entry['id']:>5}  {entry['state']:<10} {entry['series']:>3} series "
            f"{entry['instances']:>6} instances  {entry['study_instance_uid']}\n"
            f"       {entry['reason']}"
        )
    typer.echo(f"{quarantined} instance(s) in quarantine")


def register(app: typer.Typer) -> None:
    """Add ``studies`` to the segnode app."""
    app.command()(studies)
