"""Creating jobs and appending to their event log.

A job is created when a study fires and driven through the pipeline states by the
node's job runner. Every change of state is a conditional UPDATE plus an event, in one
transaction: events are only ever appended (the database refuses updates), and a job
that someone cancelled while a step ran is never moved on by that step.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from segnode.storage.errors import JobStateError
from segnode.storage.job_states import ACTIVE, TERMINAL, JobState
from segnode.storage.models import DeliveryState, Job, JobDelivery, JobEvent, JobSeries, utc_now


def append_job_event(
    session: Session,
    job_id: int,
    kind: str,
    detail: dict[str, Any] | None = None,
    duration_s: float | None = None,
) -> None:
    session.add(
        JobEvent(job_id=job_id, at=utc_now(), kind=kind, detail=detail or {}, duration_s=duration_s)
    )


def create_job(
    session: Session,
    *,
    study_id: int,
    trigger: str,
    routing_rule: str | None,
    series_ids: Iterable[int],
    detail: dict[str, Any],
) -> Job:
    """A new job in state ``received`` covering ``series_ids``."""
    now = utc_now()
    job = Job(
        study_id=study_id,
        state=JobState.RECEIVED,
        trigger=trigger,
        routing_rule=routing_rule,
        created_at=now,
        updated_at=now,
        attempt=1,
    )
    session.add(job)
    session.flush()
    for series_id in sorted(set(series_ids)):
        session.add(JobSeries(job_id=job.id, series_id=series_id))
    append_job_event(session, job.id, "created", {"trigger": trigger, **detail})
    return job


def latest_job(session: Session, study_id: int) -> Job | None:
    return session.execute(
        select(Job).where(Job.study_id == study_id).order_by(Job.id.desc()).limit(1)
    ).scalar_one_or_none()


def job_series_ids(session: Session, job_id: int) -> set[int]:
    return set(
        session.execute(select(JobSeries.series_id).where(JobSeries.job_id == job_id)).scalars()
    )


def attach_series(session: Session, job: Job, series_ids: Iterable[int], reason: str) -> list[int]:
    """Add series to a job that has not started; returns the ones added."""
    added = sorted(set(series_ids) - job_series_ids(session, job.id))
    for series_id in added:
        session.add(JobSeries(job_id=job.id, series_id=series_id))
    if added:
        job.updated_at = utc_now()
        append_job_event(
            session, job.id, "series_attached", {"series_ids": added, "reason": reason}
        )
    return added




def runnable_job_ids(session: Session, now: datetime, exclude: Iterable[int] = ()) -> list[int]:
    """Jobs with a step due now, oldest first (``exclude``: the ones already running)."""
    query = (
        select(Job.id)
        .where(Job.state.in_([state.value for state in ACTIVE]))
        .where(or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now))
        .order_by(Job.id)
    )
    excluded = set(exclude)
    return [job_id for job_id in session.execute(query).scalars() if job_id not in excluded]


def _updated_rows(result: object) -> int:
    """Rows an UPDATE matched (``Session.execute`` is typed as returning a plain Result)."""
    return cast(CursorResult[Any], result).rowcount


def advance_job(
    session: Session,
    job_id: int,
    expected: JobState,
    to: JobState,
    detail: dict[str, Any],
    duration_s: float | None,
    **columns: Any,
) -> bool:
    """Move a job from ``expected`` to ``to`` and log the transition; False if it moved meanwhile.

    The conditional UPDATE is what makes ``segnode jobs cancel`` safe while a step runs: a
    job cancelled during its step is not moved on when the step returns. ``columns`` are
    further job columns set in the same UPDATE.
    """
    now = utc_now()
    values: dict[str, Any] = {
        "state": to.value,
        "updated_at": now,
        "step_attempt": 0,
        "next_attempt_at": None,
        **columns,
    }
    if to in TERMINAL:
        values["finished_at"] = now
    moved = _updated_rows(
        session.execute(update(Job).where(Job.id == job_id, Job.state == expected.value).values(**values))
    )
    if moved:
        append_job_event(
            session, job_id, to.value, {"from": expected.value, **detail}, duration_s=duration_s
        )
    return bool(moved)


def fail_job(
    session: Session, job_id: int, expected: JobState, error: str, duration_s: float | None
) -> bool:
    """A permanent failure: the job stops at ``expected`` with the step and cause named."""
    return advance_job(
        session,
        job_id,
        expected,
        JobState.FAILED,
        {"step": expected.value, "error": error},
        duration_s,
        failed_step=expected.value,
        error=error,
    )


def postpone_step(
    session: Session,
    job_id: int,
    expected: JobState,
    error: str,
    retry_at: datetime,
    duration_s: float | None,
) -> bool:
    """A transient failure: the same step runs again at ``retry_at``."""
    job = session.get(Job, job_id)
    if job is None or job.state != expected.value:
        return False
    job.step_attempt += 1
    job.next_attempt_at = retry_at
    job.updated_at = utc_now()
    append_job_event(
        session,
        job_id,
        "step_retry",
        {
            "step": expected.value,
            "error": error,
            "failed_attempts": job.step_attempt,
            "retry_at": retry_at.isoformat(),
        },
        duration_s=duration_s,
    )
    return True


def cancel_job(session: Session, job_id: int, reason: str) -> Job:
    """Stop a job that has not finished; a step in flight is discarded when it returns."""
    job = _get_job(session, job_id)
    if job.is_terminal:
        raise JobStateError(f"job {job_id} is {job.state}: only an unfinished job can be cancelled")
    previous = job.state
    now = utc_now()
    job.state, job.updated_at, job.finished_at, job.next_attempt_at = (
        JobState.CANCELLED.value,
        now,
        now,
        None,
    )
    job.failed_step = previous  # where `segnode jobs retry` resumes
    append_job_event(
        session, job_id, JobState.CANCELLED.value, {"from": previous, "reason": reason}
    )
    return job


def retry_job(session: Session, job_id: int, from_step: JobState | None = None) -> Job:
    """Run a failed or cancelled job again from its failed step (or ``from_step``).

    The steps before it keep their outputs, and destinations that already received the
    results are not sent them again: a retry finishes the same run, it does not start a new
    one (a new run is a new job).
    """
    job = _get_job(session, job_id)
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        raise JobStateError(
            f"job {job_id} is {job.state}: only a failed or cancelled job can be retried"
        )
    resume = from_step or JobState(job.failed_step or JobState.RECEIVED)
    if resume not in ACTIVE:
        raise JobStateError(f"cannot resume job {job_id} at {resume.value!r}")
    previous = job.state
    job.state = resume.value
    job.attempt += 1
    job.step_attempt = 0
    job.next_attempt_at = None
    job.finished_at = None
    job.failed_step = None
    job.error = None
    job.updated_at = utc_now()
    for delivery in job.deliveries:
        if delivery.state == DeliveryState.FAILED:
            delivery.state = DeliveryState.PENDING.value
            delivery.attempts = 0
            delivery.next_attempt_at = None
    append_job_event(
        session,
        job_id,
        "retry",
        {"from": previous, "resume_at": resume.value, "attempt": job.attempt},
    )
    return job


def _get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id}")
    return job


def ensure_deliveries(
    session: Session, job_id: int, destinations: Iterable[str]
) -> list[JobDelivery]:
    """One row per configured destination (created once; kept across restarts and retries)."""
    existing = {
        row.destination: row
        for row in session.execute(
            select(JobDelivery).where(JobDelivery.job_id == job_id)
        ).scalars()
    }
    rows = []
    for name in destinations:
        if name not in existing:
            existing[name] = JobDelivery(
                job_id=job_id,
                destination=name,
                state=DeliveryState.PENDING.value,
                attempts=0,
                sop_instance_uids=[],
            )
            session.add(existing[name])
        rows.append(existing[name])
    session.flush()
    return rows
