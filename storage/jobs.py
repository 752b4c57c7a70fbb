"""Jobs in the database: creating them, moving them through the machine, their event log.

A job is created when a study fires and driven through the states of
``segnode.storage.job_states`` by the node's job runner. Every change of state is a
conditional UPDATE (or a locked read) plus an event, in one transaction: events are only
ever appended (the database refuses updates), and a job that someone cancelled while a
step ran is never moved on by that step. The moves themselves come from the table: a step
moves a job to ``NEXT_STATE``, a permanent error to ``failed``, an operator cancels from
``CANCELLABLE`` and retries from ``RETRYABLE`` into an ``ACTIVE`` state. Anything else is
refused with a :class:`~segnode.storage.errors.JobStateError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from segnode.storage.database import rowcount
from segnode.storage.errors import JobStateError
from segnode.storage.job_states import (
    ACTIVE,
    CANCELLABLE,
    NEXT_STATE,
    RETRYABLE,
    STOPPED_BY_STEP,
    TERMINAL,
    JobState,
)
from segnode.storage.models import (
    DeliveryState,
    Instance,
    Job,
    JobDelivery,
    JobEvent,
    JobSeries,
    Series,
    Study,
    utc_now,
)


def append_job_event(
    session: Session,
    job_id: int,
    kind: str,
    detail: dict[str, Any] | None = None,
    duration_s: float | None = None,
) -> None:
    """Append one entry to the job's log (the database refuses to change or delete it later)."""
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
    """The study's newest job (a study that fires again gets a new one), or None."""
    return session.execute(
        select(Job).where(Job.study_id == study_id).order_by(Job.id.desc()).limit(1)
    ).scalar_one_or_none()


def job_series_ids(session: Session, job_id: int) -> set[int]:
    """The series a job covers (more may be attached until it starts)."""
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


# -- what the runner reads ---------------------------------------------------------------


def runnable_job_ids(
    session: Session,
    now: datetime,
    exclude: Iterable[int] = (),
    states: Iterable[JobState] = ACTIVE,
) -> list[int]:
    """Jobs with a step due now, oldest first (``exclude``: the ones already running;
    ``states``: only jobs in these, e.g. the node's own steps when workers run the rest)."""
    query = (
        select(Job.id)
        .where(Job.state.in_(tuple(states)))
        .where(or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now))
        .order_by(Job.id)
    )
    excluded = set(exclude)
    return [job_id for job_id in session.execute(query).scalars() if job_id not in excluded]


@dataclass(frozen=True, slots=True)
class JobProgress:
    """Where a job stands: its state, its current step's failed tries, when it may run again."""

    state: JobState
    step_attempt: int
    next_attempt_at: datetime | None

    def due(self, now: datetime) -> bool:
        """An active state whose step may run at ``now`` (not waiting out a backoff)."""
        return self.state in ACTIVE and (
            self.next_attempt_at is None or self.next_attempt_at <= now
        )


def job_progress(session: Session, job_id: int) -> JobProgress | None:
    """The job's :class:`JobProgress`, or None for no such job."""
    row = session.execute(
        select(Job.state, Job.step_attempt, Job.next_attempt_at).where(Job.id == job_id)
    ).one_or_none()
    return None if row is None else JobProgress(row.state, row.step_attempt, row.next_attempt_at)


@dataclass(frozen=True, slots=True)
class JobInputFiles:
    """What the first step writes into the job folder: the study and its series' stored files."""

    study_instance_uid: str
    series_ids: tuple[int, ...]
    """The job's series rows, ascending."""
    files: dict[str, list[str]]
    """Series Instance UID -> stored paths, relative to the store root."""


def job_input_files(session: Session, job_id: int) -> JobInputFiles:
    """The job's study and the stored file of every instance of its series.

    Raises:
        NoResultFound: no such job.
    """
    study_uid = session.execute(
        select(Study.study_instance_uid).join(Job, Job.study_id == Study.id).where(Job.id == job_id)
    ).scalar_one()
    rows = session.execute(
        select(JobSeries.series_id, Series.series_instance_uid, Instance.file_path)
        .join(Series, Series.id == JobSeries.series_id)
        .join(Instance, Instance.series_id == Series.id)
        .where(JobSeries.job_id == job_id)
        .order_by(Series.id, Instance.id)
    ).all()
    files: dict[str, list[str]] = {}
    for _, series_uid, file_path in rows:
        files.setdefault(series_uid, []).append(file_path)
    return JobInputFiles(study_uid, tuple(sorted(job_series_ids(session, job_id))), files)


# -- the automatic moves (the job runner) --------------------------------------------------


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

    Raises:
        JobStateError: ``expected`` to ``to`` is not a move of the machine (a bug in the caller).
    """
    if to is not NEXT_STATE.get(expected) and not (to in STOPPED_BY_STEP and expected in ACTIVE):
        raise JobStateError(
            f"job {job_id}: no transition from {expected.value} to {to.value} "
            "(a step moves a job to its next state, a permanent error to failed, "
            "a study without the needed sequences to not_applicable)"
        )
    now = utc_now()
    values: dict[str, Any] = {
        "state": to,
        "updated_at": now,
        "step_attempt": 0,
        "next_attempt_at": None,
        **RELEASED_CLAIM,
        **columns,
    }
    if to in TERMINAL:
        values["finished_at"] = now
    moved = rowcount(
        session.execute(update(Job).where(Job.id == job_id, Job.state == expected).values(**values))
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


def conclude_not_applicable(
    session: Session,
    job_id: int,
    expected: JobState,
    reason: str,
    detail: Mapping[str, Any],
    duration_s: float | None,
) -> bool:
    """The study lacks what the model needs: the job ends in ``not_applicable``.

    ``reason`` goes where a failure's cause goes (``jobs.error``, so lists show it in one
    place), ``detail`` (the missing roles, the series the study had) into the event.
    ``failed_step`` is set like a failure's, so a retry resumes there.
    """
    return advance_job(
        session,
        job_id,
        expected,
        JobState.NOT_APPLICABLE,
        {"step": expected.value, "reason": reason, **detail},
        duration_s,
        failed_step=expected.value,
        error=reason,
    )


def postpone_step(
    session: Session,
    job_id: int,
    expected: JobState,
    error: str,
    retry_at: datetime,
    duration_s: float | None,
) -> bool:
    """A transient failure: the same step runs again at ``retry_at``; False if the job moved."""
    job = locked_job(session, job_id)
    if job is None or job.state != expected:
        return False
    job.step_attempt += 1
    job.next_attempt_at = retry_at
    job.updated_at = utc_now()
    _release(job)
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


def postpone_sending(session: Session, job_id: int, until: datetime) -> bool:
    """A destination is waiting out its backoff: the sending step runs again at ``until``.

    Not a failure of the step (no event, no attempt counted: each destination counts its own).
    False if the job is no longer sending (cancelled meanwhile).
    """
    return bool(
        rowcount(
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.SENDING)
                .values(next_attempt_at=until)
            )
        )
    )


def record_models(session: Session, job_id: int, model_ids: Sequence[str], sha256: str) -> None:
    """Which model(s) segmented the job: the ids joined by ``+`` and the first one's weights hash."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(model_id="+".join(model_ids), model_sha256=sha256)
    )


def record_quality(
    session: Session, job_id: int, review_recommended: bool, flags: Sequence[Mapping[str, Any]]
) -> None:
    """The write step's quality verdict, on the job row (where lists and dashboards read it)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(review_recommended=review_recommended, quality_flags=[dict(flag) for flag in flags])
    )


# -- the manual moves (``segnode jobs cancel`` / ``retry``) -------------------------------


def cancel_job(session: Session, job_id: int, reason: str) -> Job:
    """Stop a job that has not finished; a step in flight is discarded when it returns.

    Raises:
        JobStateError: no such job, or it is not in a state that can be cancelled.
    """
    job = _get_job(session, job_id)
    if job.state not in CANCELLABLE:
        raise JobStateError(f"job {job_id} is {job.state}: only an unfinished job can be cancelled")
    previous = job.state
    now = utc_now()
    job.state, job.updated_at, job.finished_at, job.next_attempt_at = (
        JobState.CANCELLED,
        now,
        now,
        None,
    )
    job.failed_step = previous.value  # where `segnode jobs retry` resumes
    _release(job)  # a worker still running the step finds it no longer holds it
    append_job_event(
        session, job_id, JobState.CANCELLED.value, {"from": previous.value, "reason": reason}
    )
    return job


def retry_job(session: Session, job_id: int, from_step: JobState | None = None) -> Job:
    """Run a failed or cancelled job again from its failed step (or ``from_step``).

    The steps before it keep their outputs, and destinations that already received the
    results are not sent them again: a retry finishes the same run, it does not start a new
    one (a new run is a new job).

    Raises:
        JobStateError: no such job, it is not failed or cancelled, or the resume state is
            not an active one.
    """
    job = _get_job(session, job_id)
    if job.state not in RETRYABLE:
        raise JobStateError(
            f"job {job_id} is {job.state}: only a failed, not applicable or cancelled job can be retried"
        )
    resume = from_step or JobState(job.failed_step or JobState.RECEIVED)
    if resume not in ACTIVE:
        raise JobStateError(f"cannot resume job {job_id} at {resume.value!r}")
    previous = job.state
    job.state = resume
    job.attempt += 1
    job.step_attempt = 0
    job.next_attempt_at = None
    job.finished_at = None
    job.failed_step = None
    job.error = None
    job.updated_at = utc_now()
    _release(job)
    for delivery in job.deliveries:
        if delivery.state == DeliveryState.FAILED:
            delivery.state = DeliveryState.PENDING.value
            delivery.attempts = 0
            delivery.next_attempt_at = None
    append_job_event(
        session,
        job_id,
        "retry",
        {"from": previous.value, "resume_at": resume.value, "attempt": job.attempt},
    )
    return job


#: The claim columns as every move leaves them: nobody runs the new step yet, and its
#: message is due now (``segnode.storage.step_claims``; unused by the embedded executor).
RELEASED_CLAIM: dict[str, Any] = {
    "step_owner": None,
    "step_lease_until": None,
    "dispatch_due_at": None,
}


def _release(job: Job) -> None:
    for column, value in RELEASED_CLAIM.items():
        setattr(job, column, value)


def locked_job(session: Session, job_id: int) -> Job | None:
    """The job as committed now, its row locked until the transaction ends.

    Why locked: the runner's conditional UPDATE and an operator's command may race; on
    PostgreSQL ``FOR UPDATE`` makes one wait for the other and read its result (SQLite's
    ``BEGIN IMMEDIATE`` already serialises writers).
    """
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def _get_job(session: Session, job_id: int) -> Job:
    job = locked_job(session, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id}")
    return job


# -- deliveries ------------------------------------------------------------------------------


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
