"""``segnode jobs``: list, show, retry and cancel jobs.

None of them migrates: they open the database as it is (``open_sessions``) and refuse a
schema that is behind, naming ``segnode db upgrade``. ``list`` and ``show`` only read
(``segnode.storage.queries``); ``retry`` and ``cancel`` are the machine's manual transitions
(``segnode.storage.jobs``). This module only parses and formats.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, open_sessions
from segnode.storage.database import read_only_session
from segnode.storage.errors import JobStateError
from segnode.storage.job_states import ACTIVE, JobState
from segnode.storage.jobs import cancel_job, retry_job
from segnode.storage.queries import job_detail, list_jobs

jobs_app = typer.Typer(no_args_is_help=True, help="Jobs.")


def register(app: typer.Typer) -> None:
    """Add the ``jobs`` command group to the segnode app."""
    app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List jobs."""
    sessions = open_sessions(config, data_dir)
    with read_only_session(sessions) as session:
        rows = list_jobs(session)
    if as_json:
        typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
        return
    for row in rows:
        review = "  REVIEW" if row.review_recommended else ""
        typer.echo(f"{row.id:>5}  study {row.study_id:>5}  {row.state:<12} {row.trigger}{review}")
        if row.error:
            typer.echo(f"       {row.error}")


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Show one job: state, failure, model, quality flags, deliveries and its event log (JSON)."""
    sessions = open_sessions(config, data_dir)
    with read_only_session(sessions) as session:
        detail = job_detail(session, job_id)
    if detail is None:
        typer.echo(f"error: no job {job_id}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(detail.to_json(), indent=2))


@jobs_app.command("retry")
def jobs_retry(
    job_id: int,
    from_step: Annotated[
        str | None,
        typer.Option("--from", help="Resume at this step (default: the step that failed)."),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run a failed or cancelled job again; a running node picks it up within a second."""
    steps = [state.value for state in ACTIVE]
    if from_step is not None and from_step not in steps:
        typer.echo(f"error: --from must be one of {', '.join(steps)}", err=True)
        raise typer.Exit(2)
    sessions = open_sessions(config, data_dir)
    try:
        with sessions.begin() as session:
            job = retry_job(session, job_id, JobState(from_step) if from_step else None)
    except JobStateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"job {job_id}: attempt {job.attempt}, resumes at {job.state}")


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: int,
    reason: Annotated[str, typer.Option("--reason", help="Recorded in the job's log.")] = "cancelled by operator",
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Cancel an unfinished job; a step in flight finishes and its outputs are discarded."""
    sessions = open_sessions(config, data_dir)
    try:
        with sessions.begin() as session:
            cancel_job(session, job_id, reason)
    except JobStateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"job {job_id}: cancelled")
