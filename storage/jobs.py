"""Creating jobs and appending to their event log.

A job is created when a study fires; later issues drive it through the
pipeline states. Events are only ever appended (the database refuses updates).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Job, JobEvent, JobSeries, JobState, utc_now


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
