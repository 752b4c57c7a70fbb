"""What ``segnode studies`` and ``segnode jobs list`` / ``show`` print, as typed rows.

Why here: the commands format, storage reads, so the SQL behind an operator's view sits
beside the SQL that wrote it. The rows' field names are the keys of the commands' ``--json``
output (documented in ``docs/operations.md``); :meth:`to_json` gives that output, times as
ISO 8601. Every function only reads: the commands call them in a read-only session.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import Field, asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from segnode.storage.job_states import JobState
from segnode.storage.models import (
    Job,
    JobDelivery,
    JobEvent,
    QuarantinedInstance,
    Series,
    Study,
    UtcDateTime,
)


def _json_fields(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in items}


class _Row:
    """A dataclass row that turns into its JSON object (nested rows and lists included)."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self, dict_factory=_json_fields)


@dataclass(frozen=True, slots=True)
class StudyRow(_Row):
    """One study: its completion state, why, and how much of it arrived."""

    id: int
    study_instance_uid: str
    state: str
    series: int
    """How many series."""
    instances: int
    last_received_at: datetime
    reason: str | None


def list_studies(session: Session) -> list[StudyRow]:
    """Every study, oldest first."""
    rows = session.execute(
        select(Study, func.count(Series.id))
        .join(Series, Series.study_id == Study.id, isouter=True)
        .group_by(Study.id)
        .order_by(Study.id)
    ).all()
    return [
        StudyRow(
            id=study.id,
            study_instance_uid=study.study_instance_uid,
            state=study.state,
            series=count,
            instances=study.received_instances,
            last_received_at=study.last_received_at,
            reason=study.state_reason,
        )
        for study, count in rows
    ]


def quarantined_count(session: Session) -> int:
    """How many instances are in quarantine."""
    return int(session.execute(select(func.count(QuarantinedInstance.id))).scalar_one())


@dataclass(frozen=True, slots=True)
class JobRow(_Row):
    """One job in ``segnode jobs list``."""

    id: int
    study_id: int
    state: JobState
    rule: str | None
    created_at: datetime
    trigger: str
    failed_step: str | None
    error: str | None
    review_recommended: bool | None
    """True when the result's quality checks raised a flag; None before the write step."""


def list_jobs(
    session: Session,
    *,
    states: Collection[JobState] = (),
    study_id: int | None = None,
    newest_first: bool = False,
    limit: int | None = None,
) -> list[JobRow]:
    """Jobs, oldest first (or newest first), optionally only in ``states`` or of one study."""
    query = select(Job).order_by(Job.id.desc() if newest_first else Job.id)
    if states:
        query = query.where(Job.state.in_(list(states)))
    if study_id is not None:
        query = query.where(Job.study_id == study_id)
    if limit is not None:
        query = query.limit(limit)
    return [
        JobRow(
            id=job.id,
            study_id=job.study_id,
            state=job.state,
            rule=job.routing_rule,
            created_at=job.created_at,
            trigger=job.trigger,
            failed_step=job.failed_step,
            error=job.error,
            review_recommended=job.review_recommended,
        )
        for job in session.execute(query).scalars()
    ]


@dataclass(frozen=True, slots=True)
class DeliveryRow(_Row):
    """One destination's copy of a job's results."""

    destination: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    instances: int
    """How many result instances it received."""


@dataclass(frozen=True, slots=True)
class EventRow(_Row):
    """One entry of a job's log."""

    at: datetime
    kind: str
    duration_s: float | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JobDetail(_Row):
    """One job in ``segnode jobs show``: state, failure, model, deliveries and its log."""

    id: int
    study_id: int
    state: JobState
    attempt: int
    failed_step: str | None
    error: str | None
    next_attempt_at: datetime | None
    model_id: str | None
    model_sha256: str | None
    review_recommended: bool | None
    quality_flags: list[dict[str, Any]]
    """The quality flags the write step raised (check, role, summary)."""
    trigger: str
    routing_rule: str | None
    deliveries: list[DeliveryRow]
    events: list[EventRow]


def job_detail(session: Session, job_id: int) -> JobDetail | None:
    """The job's :class:`JobDetail`, or None for no such job."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    events = session.execute(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    ).scalars()
    return JobDetail(
        id=job.id,
        study_id=job.study_id,
        state=job.state,
        attempt=job.attempt,
        failed_step=job.failed_step,
        error=job.error,
        next_attempt_at=job.next_attempt_at,
        model_id=job.model_id,
        model_sha256=job.model_sha256,
        review_recommended=job.review_recommended,
        quality_flags=list(job.quality_flags or []),
        trigger=job.trigger,
        routing_rule=job.routing_rule,
        deliveries=[
            DeliveryRow(
                destination=d.destination,
                state=d.state,
                attempts=d.attempts,
                last_error=d.last_error,
                delivered_at=d.delivered_at,
                instances=len(d.sop_instance_uids),
            )
            for d in job.deliveries
        ],
        events=[
            EventRow(at=e.at, kind=e.kind, duration_s=e.duration_s, detail=e.detail) for e in events
        ],
    )


@dataclass(frozen=True, slots=True)
class QuarantineRow(_Row):
    """One quarantined instance: why, what the sender was told, where the copy is."""

    id: int
    quarantined_at: datetime
    reason: str
    status_code: int
    has_file: bool
    sop_instance_uid: str | None
    sop_class_uid: str | None
    calling_ae: str | None
    association_id: str | None


def list_quarantine(session: Session, limit: int = 500) -> list[QuarantineRow]:
    """The newest ``limit`` quarantine entries first."""
    rows = session.execute(
        select(QuarantinedInstance).order_by(QuarantinedInstance.id.desc()).limit(limit)
    ).scalars()
    return [
        QuarantineRow(
            id=row.id,
            quarantined_at=row.quarantined_at,
            reason=row.reason,
            status_code=row.status_code,
            has_file=row.file_path is not None,
            sop_instance_uid=row.sop_instance_uid,
            sop_class_uid=row.sop_class_uid,
            calling_ae=row.calling_ae,
            association_id=row.association_id,
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class DestinationDeliveries(_Row):
    """One destination's deliveries over all jobs, by state, and its latest failure."""

    destination: str
    by_state: dict[str, int]
    attempts: int
    last_delivered_at: datetime | None
    last_error: str | None


def deliveries_by_destination(session: Session) -> dict[str, DestinationDeliveries]:
    counts: dict[str, dict[str, int]] = {}
    attempts: dict[str, int] = {}
    for name, state, count, tries in session.execute(
        select(
            JobDelivery.destination,
            JobDelivery.state,
            func.count(JobDelivery.id),
            func.sum(JobDelivery.attempts),
        ).group_by(JobDelivery.destination, JobDelivery.state)
    ).tuples():
        counts.setdefault(name, {})[state] = int(count)
        attempts[name] = attempts.get(name, 0) + int(tries or 0)
    summary: dict[str, DestinationDeliveries] = {}
    for name, by_state in counts.items():
        last = session.execute(
            select(func.max(JobDelivery.delivered_at, type_=UtcDateTime())).where(
                JobDelivery.destination == name
            )
        ).scalar_one()
        error = session.execute(
            select(JobDelivery.last_error)
            .where(JobDelivery.destination == name, JobDelivery.last_error.is_not(None))
            .order_by(JobDelivery.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        summary[name] = DestinationDeliveries(name, by_state, attempts[name], last, error)
    return summary
