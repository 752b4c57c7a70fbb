"""``segnode jobs``: list, show, retry and cancel jobs.

None of them migrates: they open the database as it is (``open_sessions``) and refuse a
schema that is behind, naming ``segnode db upgrade``. ``list`` and ``show`` only read
(``segnode.storage.queries``); ``retry`` and ``cancel`` are the machine's manual transitions
(``segnode.storage.jobs``), both through the service layer (``segnode.node.admin.jobs``) that the
dashboard and the REST API call too; a retry or cancel is recorded in the audit log as
``cli:<login>``. This module only parses and formats.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from segnode.node.admin import jobs as admin_jobs
from segnode.node.admin.actors import command_line_actor
from segnode.node.admin.errors import AdminError
from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, open_sessions

jobs_app = typer.Typer(no_args_is_help=True, help="Jobs.")


def register(app: typer.Typer) -> None:
    """Add the ``jobs`` command group to the segnode app."""
    app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List jobs."""
    rows = admin_jobs.jobs(open_sessions(config, data_dir))
    if as_json:
        typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
        return
    for row in rows:
        review = "  REVIEW" if row.review_recommended else ""
        typer.echo(f"{row.id:>5}  study {row.study_id:>5}  {row.state:<14} {row.trigger}{review}")
        if row.error:
            typer.echo(f"       {row.error}")


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Show one job: state, failure, model, quality flags, deliveries and its event log (JSON)."""
    try:
        detail = admin_jobs.job(open_sessions(config, data_dir), job_id)
    except AdminError as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps(detail.to_json(), indent=2))


@jobs_app.command("retry")
def jobs_retry(
    job_id: int,
    from_step: Annotated[
        str | None,
        typer.Option("--from", help="Resume at this step (default: the step that stopped it)."),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run a failed, not applicable or cancelled job again; a running node picks it up within a second."""
    if from_step is not None and from_step not in admin_jobs.RESUMABLE_STEPS:
        typer.echo(f"error: --from must be one of {', '.join(admin_jobs.RESUMABLE_STEPS)}", err=True)
        raise typer.Exit(2)
    sessions = open_sessions(config, data_dir)
    try:
        job = admin_jobs.retry(sessions, command_line_actor(), job_id, from_step)
    except AdminError as exc:
        raise _fail(exc) from exc
    typer.echo(f"job {job_id}: attempt {job.attempt}, resumes at {job.state}")


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: int,
    reason: Annotated[str, typer.Option("--reason", help="Recorded in the job's log.")] = "cancelled by operator",
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Cancel an unfinished job; a step in flight finishes and its outputs are discarded."""
    try:
        admin_jobs.cancel(open_sessions(config, data_dir), command_line_actor(), job_id, reason)
    except AdminError as exc:
        raise _fail(exc) from exc
    typer.echo(f"job {job_id}: cancelled")


def _fail(exc: AdminError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)
