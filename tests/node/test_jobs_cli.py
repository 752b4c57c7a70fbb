"""``segnode jobs``: what list and show print, retry and cancel, and that none of them migrates.

Fast: the jobs are made with the storage functions on a SQLite database in a temporary data
directory (no listener, no pipeline); the commands run through typer's ``CliRunner``.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from segnode.node.cli import app
from segnode.storage.database import (
    MIGRATIONS_DIR,
    create_db_engine,
    current_revision,
    head_revision,
    make_session_factory,
)
from segnode.storage.instances import record_instance
from segnode.storage.job_states import JobState
from segnode.storage.jobs import (
    advance_job,
    append_job_event,
    create_job,
    ensure_deliveries,
    fail_job,
    record_quality,
)
from segnode.storage.models import AuditEvent
from tests.storage.records import instance_record

OLD_REVISION = "0002"


def segnode(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])


def database_at(data_dir: Path, revision: str) -> str:
    """A SQLite database under ``data_dir`` migrated only as far as ``revision``; its URL."""
    url = f"sqlite:///{(data_dir / 'segnode.db').resolve()}"
    engine = create_db_engine(url)
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    command.upgrade(config, revision)
    engine.dispose()
    return url


def _revision(url: str) -> str | None:
    engine = create_db_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory whose database ``segnode db upgrade`` created."""
    folder = tmp_path / "data"
    result = segnode(folder, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"database at revision {head_revision()}" in result.output
    return folder


def _sessions(data_dir: Path) -> sessionmaker[Session]:
    return make_session_factory(create_db_engine(f"sqlite:///{(data_dir / 'segnode.db').resolve()}"))


def _failed_job(data_dir: Path) -> int:
    """A job that got to selecting and failed there, with one destination pending."""
    with _sessions(data_dir).begin() as session:
        recorded = record_instance(session, instance_record("1.2.3.1.1"))
        job = create_job(
            session,
            study_id=recorded.study_id,
            trigger="study quiet for 60 s",
            routing_rule="brain-mr",
            series_ids=[recorded.series_id],
            detail={},
        )
        append_job_event(session, job.id, "selection", {"roles": {}})
        advance_job(session, job.id, JobState.RECEIVED, JobState.SELECTING, {"step": "received"}, 0.25)
        ensure_deliveries(session, job.id, ["pacs"])
        fail_job(session, job.id, JobState.SELECTING, "selecting: missing FLAIR", 1.0)
        return job.id


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "list"],
        ["jobs", "list", "--json"],
        ["jobs", "show", "1"],
        ["jobs", "retry", "1"],
        ["jobs", "cancel", "1"],
        ["studies"],
    ],
    ids=" ".join,
)
def test_commands_other_than_serve_and_db_upgrade_refuse_an_old_schema_and_leave_it(
    tmp_path: Path, args: list[str]
) -> None:
    url = database_at(tmp_path, OLD_REVISION)
    result = segnode(tmp_path, *args)
    assert result.exit_code == 1
    assert "segnode db upgrade" in result.output
    assert f"database schema is at {OLD_REVISION}" in result.output
    assert _revision(url) == OLD_REVISION  # not migrated behind the operator's back


def test_a_read_only_command_does_not_create_a_database(tmp_path: Path) -> None:
    result = segnode(tmp_path / "typo", "jobs", "list")
    assert result.exit_code == 1 and "segnode db upgrade" in result.output
    assert not (tmp_path / "typo").exists()


def test_db_upgrade_migrates_an_old_schema(tmp_path: Path) -> None:
    url = database_at(tmp_path, OLD_REVISION)
    assert segnode(tmp_path, "db", "upgrade").exit_code == 0
    assert _revision(url) == head_revision()
    assert segnode(tmp_path, "jobs", "list").exit_code == 0


def test_jobs_list_prints_every_job_with_its_state_and_failure(data_dir: Path) -> None:
    job_id = _failed_job(data_dir)
    listed = json.loads(segnode(data_dir, "jobs", "list", "--json").output)
    [entry] = listed
    assert set(entry) == {
        "id", "study_id", "state", "rule", "created_at", "trigger", "failed_step", "error", "review_recommended",
    }
    assert entry["review_recommended"] is None  # failed before the quality checks
    assert (entry["id"], entry["state"], entry["rule"], entry["failed_step"]) == (
        job_id,
        "failed",
        "brain-mr",
        "selecting",
    )
    assert entry["error"] == "selecting: missing FLAIR" and entry["created_at"].endswith("+00:00")
    text = segnode(data_dir, "jobs", "list").output
    assert "failed" in text and "study quiet for 60 s" in text and "selecting: missing FLAIR" in text


def test_jobs_show_prints_the_job_its_deliveries_and_its_log(data_dir: Path) -> None:
    job_id = _failed_job(data_dir)
    result = segnode(data_dir, "jobs", "show", str(job_id))
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert (shown["state"], shown["attempt"], shown["failed_step"]) == ("failed", 1, "selecting")
    assert shown["next_attempt_at"] is None and shown["model_id"] is None
    assert shown["deliveries"] == [
        {
            "destination": "pacs",
            "state": "pending",
            "attempts": 0,
            "last_error": None,
            "delivered_at": None,
            "instances": 0,
        }
    ]
    assert [e["kind"] for e in shown["events"]] == ["created", "selection", "selecting", "failed"]
    assert shown["events"][2]["duration_s"] == 0.25
    assert shown["events"][3]["detail"] == {
        "from": "selecting",
        "step": "selecting",
        "error": "selecting: missing FLAIR",
    }
    missing = segnode(data_dir, "jobs", "show", "99")
    assert missing.exit_code == 1 and "no job 99" in missing.output


def test_a_job_whose_quality_checks_raised_a_flag_is_marked_for_review(data_dir: Path) -> None:
    job_id = _failed_job(data_dir)
    flag = {"check": "motion", "role": "t2", "summary": "T2 is 16.2 mm / 1.0° from the T1c"}
    with _sessions(data_dir).begin() as session:
        record_quality(session, job_id, True, [flag])
    assert "REVIEW" in segnode(data_dir, "jobs", "list").output
    shown = json.loads(segnode(data_dir, "jobs", "show", str(job_id)).output)
    assert (shown["review_recommended"], shown["quality_flags"]) == (True, [flag])
    with _sessions(data_dir).begin() as session:
        record_quality(session, job_id, False, [])
    assert "REVIEW" not in segnode(data_dir, "jobs", "list").output


def test_retry_and_cancel_are_the_machines_manual_moves(data_dir: Path) -> None:
    job_id = _failed_job(data_dir)
    assert segnode(data_dir, "jobs", "cancel", str(job_id)).exit_code == 1  # failed: not cancellable
    retried = segnode(data_dir, "jobs", "retry", str(job_id))
    assert retried.exit_code == 0 and "attempt 2, resumes at selecting" in retried.output
    assert segnode(data_dir, "jobs", "retry", str(job_id)).exit_code == 1  # active: not retryable
    cancelled = segnode(data_dir, "jobs", "cancel", str(job_id), "--reason", "wrong study")
    assert cancelled.exit_code == 0 and f"job {job_id}: cancelled" in cancelled.output
    again = segnode(data_dir, "jobs", "retry", str(job_id), "--from", "converting")
    assert again.exit_code == 0 and "attempt 3, resumes at converting" in again.output
    wrong = segnode(data_dir, "jobs", "retry", str(job_id), "--from", "done")
    assert wrong.exit_code == 2 and "--from must be one of received, selecting" in wrong.output
    events = json.loads(segnode(data_dir, "jobs", "show", str(job_id)).output)["events"]
    assert [e["kind"] for e in events][-3:] == ["retry", "cancelled", "retry"]
    assert events[-2]["detail"] == {"from": "selecting", "reason": "wrong study"}


def test_the_command_lines_retry_and_cancel_are_in_the_audit_log_under_its_login(data_dir: Path) -> None:
    """The CLI goes through the same service layer as the dashboard: same moves, same audit."""
    job_id = _failed_job(data_dir)
    assert segnode(data_dir, "jobs", "retry", str(job_id)).exit_code == 0
    assert segnode(data_dir, "jobs", "cancel", str(job_id), "--reason", "wrong study").exit_code == 0
    with _sessions(data_dir)() as session:
        rows = session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
    login = getpass.getuser()
    assert [(r.actor, r.action, r.target, r.ok, r.client) for r in rows] == [
        (f"cli:{login}", "job.retry", f"job {job_id}", True, None),
        (f"cli:{login}", "job.cancel", f"job {job_id}", True, None),
    ]
    assert rows[0].detail == {"resume_at": "selecting", "attempt": 2}
    assert rows[1].detail == {"stopped_at": "selecting", "reason": "wrong study"}
