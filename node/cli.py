"""The ``segnode`` command line (typer).

Each command loads the configuration once and passes it down; nothing reads
global state. Tests call these commands through typer's ``CliRunner``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer
from sqlalchemy import func, select

from node.commands.options import ConfigOption, DataDirOption, JsonOption, settings_or_exit
from node.dicom_header import CAPTURED_KEYWORDS, capture_attributes
from node.logs import configure_logging
from node.routing import SeriesFacts, route_study, rule_keywords
from node.study_files import read_headers
from storage.models import Job, JobEvent, JobState, QuarantinedInstance, Series, Study

app = typer.Typer(no_args_is_help=True, help="segnode: DICOM brain-tumour segmentation node.")
rules_app = typer.Typer(no_args_is_help=True, help="Routing rules.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
jobs_app = typer.Typer(no_args_is_help=True, help="Jobs.")
app.add_typer(rules_app, name="rules")
app.add_typer(db_app, name="db")
app.add_typer(jobs_app, name="jobs")


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="DICOM port.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Node AE title.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run the DICOM listener, the completion monitor and the job runner until stopped."""
    from node.service import serve_forever

    listener = {
        key: value
        for key, value in (("host", host), ("port", port), ("ae_title", ae_title))
        if value is not None
    }
    settings = settings_or_exit(config, data_dir, {"listener": listener} if listener else {})
    configure_logging(settings.logging.level, settings.logging.format)
    # Everything the node and its workers write (job folders included, which are not
    # made through FileStore) is private: owner only, or group-readable with file_group.
    os.umask(0o027 if settings.storage.file_group else 0o077)
    serve_forever(settings)


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration and print it as JSON."""
    settings = settings_or_exit(config)
    typer.echo(settings.model_dump_json(indent=2))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Create or migrate the database schema to the newest version."""
    from node.service import open_storage
    from storage.database import current_revision

    engine, _, _ = open_storage(settings_or_exit(config, data_dir))
    typer.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


class _SeriesReport(TypedDict):
    series_instance_uid: str
    description: object


class _EvaluationReport(TypedDict):
    rule: str
    matched: bool
    reasons: list[str]


class _StudyReport(TypedDict):
    """One study's entry in ``segnode rules test`` output (also its JSON shape)."""

    study_instance_uid: str
    series: list[_SeriesReport]
    action: str
    rule: str | None
    completion_profile: str
    explanation: str
    evaluations: list[_EvaluationReport]


@rules_app.command("test")
def rules_test(
    path: Annotated[Path, typer.Argument(help="A DICOM file or a folder of them.")],
    config: ConfigOption = None,
    called_ae: Annotated[
        str | None, typer.Option("--called-ae", help="Pretend it was sent to this AE title.")
    ] = None,
    calling_ae: Annotated[
        str | None, typer.Option("--calling-ae", help="Pretend it came from this AE title.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show which routing rule matches each study in PATH, and why."""
    settings = settings_or_exit(config)
    keywords = CAPTURED_KEYWORDS + rule_keywords(settings.routing)
    called = called_ae or settings.listener.ae_title
    headers, skipped = read_headers(path)
    studies = {
        study_uid: {
            series_uid: SeriesFacts(
                series_instance_uid=series_uid,
                attributes=capture_attributes(items[0][1], keywords),
                called_ae_titles=frozenset([called]),
                calling_ae_titles=frozenset([calling_ae] if calling_ae else []),
            )
            for series_uid, items in series.items()
        }
        for study_uid, series in headers.items()
    }
    report: list[_StudyReport] = []
    for study_uid, series in studies.items():
        decision = route_study(settings.routing, list(series.values()))
        report.append(
            {
                "study_instance_uid": study_uid,
                "series": [
                    {
                        "series_instance_uid": uid,
                        "description": facts.attributes.get("SeriesDescription"),
                    }
                    for uid, facts in series.items()
                ],
                "action": decision.action.value,
                "rule": decision.rule,
                "completion_profile": decision.completion_profile,
                "explanation": decision.explanation,
                "evaluations": [
                    {"rule": e.rule, "matched": e.matched, "reasons": e.reasons}
                    for e in decision.evaluations
                ],
            }
        )
    if as_json:
        typer.echo(json.dumps({"studies": report, "unreadable_files": skipped}, indent=2))
        return
    for entry in report:
        typer.echo(f"study {entry['study_instance_uid']}: {entry['action'].upper()}")
        typer.echo(f"  {entry['explanation']} (completion profile {entry['completion_profile']!r})")
        for evaluation in entry["evaluations"]:
            mark = "MATCH" if evaluation["matched"] else "no"
            typer.echo(f"  rule {evaluation['rule']!r}: {mark}")
            for reason in evaluation["reasons"]:
                typer.echo(f"      {reason}")
    if skipped:
        typer.echo(f"{skipped} file(s) were not readable DICOM and were skipped", err=True)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A folder of DICOM files (one or more studies).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a study's series and which are taken as T1, T1c, T2 and FLAIR, and why."""
    from node.study_files import read_study_folder
    from pipeline.selection import identify_sequences

    settings = settings_or_exit(config)
    studies, unreadable = read_study_folder(path)
    report = []
    for study_uid, series in studies.items():
        assignment = identify_sequences(series, settings.selection)
        report.append({"study_instance_uid": study_uid, **assignment.as_record()})
    if as_json:
        typer.echo(json.dumps({"studies": report, "unreadable_files": unreadable}, indent=2))
        return
    for study in report:
        typer.echo(f"study {study['study_instance_uid']}")
        for role, chosen in study["roles"].items():  # type: ignore[attr-defined]
            described = (
                f"{chosen['series_description']!r} {chosen['series_instance_uid']}"
                if chosen
                else "MISSING"
            )
            typer.echo(f"  {role.upper():<6} {described}")
        for candidate in study["candidates"]:  # type: ignore[attr-defined]
            verdict = (
                candidate["rejected"]
                and f"rejected: {candidate['rejected']}"
                or "; ".join(candidate["reasons"])
            )
            typer.echo(
                f"    #{candidate['series_number']} {candidate['series_description']!r}: {verdict}"
            )
    if unreadable:
        typer.echo(f"{unreadable} file(s) were not readable DICOM and were skipped", err=True)


def _open_sessions(config: Path | None, data_dir: Path | None) -> Any:
    from node.service import open_storage

    _, sessions, _ = open_storage(settings_or_exit(config, data_dir))
    return sessions


@app.command()
def studies(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List received studies with their completion state."""
    sessions = _open_sessions(config, data_dir)
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


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List jobs."""
    sessions = _open_sessions(config, data_dir)
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
    sessions = _open_sessions(config, data_dir)
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
    from storage.errors import JobStateError
    from storage.jobs import ACTIVE_JOB_STATES, retry_job

    steps = [state.value for state in ACTIVE_JOB_STATES]
    if from_step is not None and from_step not in steps:
        typer.echo(f"error: --from must be one of {', '.join(steps)}", err=True)
        raise typer.Exit(2)
    sessions = _open_sessions(config, data_dir)
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
    from storage.errors import JobStateError
    from storage.jobs import cancel_job

    sessions = _open_sessions(config, data_dir)
    try:
        with sessions.begin() as session:
            cancel_job(session, job_id, reason)
    except JobStateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"job {job_id}: cancelled")


def _register_commands() -> None:
    """Commands that live in node/commands/ (one module each)."""
    from node.commands import cv, evaluate, models, predict, run, train

    for module in (run, train, predict, evaluate, models, cv):
        module.register(app)


_register_commands()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
