"""``segnode jobs``: list, show, retry and cancel jobs."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from sqlalchemy import select

from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, open_sessions
from segnode.storage.job_states import JobState
from segnode.storage.models import Job, JobEvent

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
    with sessions() as session:
        entries = [
            {
                "id": job.id,
                "study_id": job.study_id,
                "state": job.state,
                "rule": job.routing_rule,
                "created_at": job.created_at.isoformat(),
                "trigger": job.trigger,
                "failed_step": job.failed_step,
                "error": job.error,
            }
            for job in session.execute(select(Job).order_by(Job.id)).scalars()
        ]
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        typer.echo(
            f"{entry['id']:>5}  study {entry['study_id']:>5}  {entry['state']:<12} {entry['trigger']}"
        )
        if entry["error"]:
            typer.echo(f"       {entry['error']}")


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Show one job: state, failure, model, deliveries and its event log (JSON)."""
    sessions = open_sessions(config, data_dir)
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            typer.echo(f"error: no job {job_id}", err=True)
            raise typer.Exit(1)
        events = session.execute(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).scalars()
        payload = {
            "id": job.id,
            "study_id": job.study_id,
            "state": job.state,
            "attempt": job.attempt,
            "failed_step": job.failed_step,
            "error": job.error,
            "next_attempt_at": job.next_attempt_at.isoformat() if job.next_attempt_at else None,
            "model_id": job.model_id,
            "model_sha256": job.model_sha256,
            "trigger": job.trigger,
            "routing_rule": job.routing_rule,
            "deliveries": [
                {
                    "destination": d.destination,
                    "state": d.state,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
                    "instances": len(d.sop_instance_uids),
                }
                for d in job.deliveries
            ],
            "events": [
                {
                    "at": e.at.isoformat(),
                    "kind": e.kind,
                    "duration_s": e.duration_s,
                    "detail": e.detail,
                }
                for e in events
            ],
        }
    typer.echo(json.dumps(payload, indent=2))


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
    from segnode.storage.errors import JobStateError
    from segnode.storage.job_states import ACTIVE
    from segnode.storage.jobs import retry_job

    steps = [state.value for state in ACTIVE]
    if from_step is not None and from_step not in steps:
        typer.echo(f"error: --from must be one of {', '.join(steps)}", err=True)
        raise typer.Exit(2)
    sessions = open_sessions(config, data_dir)
    try:
        with sessions.begin() as session:
            job = retry_job(session, job_id, JobState(from_step) if from_step else None)
            typer.echo(f"job {job_id}: attempt {job.attempt}, resumes at {job.state}")
    except JobStateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: int,
    reason: Annotated[str, typer.Option("--reason", help="Recorded in the job's log.")] = "cancelled by operator",
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Cancel an unfinished job; a step in flight finishes and its outputs are discarded."""
    from segnode.storage.errors import JobStateError
    from segnode.storage.jobs import cancel_job

    sessions = open_sessions(config, data_dir)
    try:
        with sessions.begin() as session:
            cancel_job(session, job_id, reason)
    except JobStateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"job {job_id}: cancelled")
