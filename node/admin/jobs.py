"""Jobs: list, show, retry, cancel (``segnode jobs``, ``/api/jobs``, the jobs pages)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.orm import Session, sessionmaker

from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import ConflictError, InvalidInputError, NotFoundError
from segnode.storage.audit import record_audit
from segnode.storage.database import read_only_session
from segnode.storage.errors import JobStateError
from segnode.storage.job_states import ACTIVE, JobState
from segnode.storage.jobs import cancel_job, retry_job
from segnode.storage.models import Job, UserRole
from segnode.storage.queries import JobDetail, JobRow, job_detail, list_jobs

#: The steps a retry may resume at (``--from``), in path order.
RESUMABLE_STEPS: tuple[str, ...] = tuple(state.value for state in ACTIVE)


def parse_states(values: Collection[str]) -> list[JobState]:
    """Job states from their names, refusing an unknown one with the known ones listed."""
    known = {state.value: state for state in JobState}
    unknown = [value for value in values if value not in known]
    if unknown:
        raise InvalidInputError(f"unknown job state {unknown[0]!r}; one of {', '.join(known)}")
    return [known[value] for value in values]


def jobs(
    sessions: sessionmaker[Session],
    *,
    states: Collection[JobState] = (),
    study_id: int | None = None,
    newest_first: bool = False,
    limit: int | None = None,
) -> list[JobRow]:
    with read_only_session(sessions) as session:
        return list_jobs(
            session, states=states, study_id=study_id, newest_first=newest_first, limit=limit
        )


def job(sessions: sessionmaker[Session], job_id: int) -> JobDetail:
    with read_only_session(sessions) as session:
        detail = job_detail(session, job_id)
    if detail is None:
        raise NotFoundError(f"no job {job_id}")
    return detail


def retry(
    sessions: sessionmaker[Session], actor: Actor, job_id: int, from_step: str | None = None
) -> Job:
    """Run a failed, not applicable or cancelled job again (from ``from_step``, else where it stopped)."""
    actor.require(UserRole.OPERATOR, "retrying a job")
    if from_step is not None and from_step not in RESUMABLE_STEPS:
        raise InvalidInputError(f"the step to resume at must be one of {', '.join(RESUMABLE_STEPS)}")
    with sessions.begin() as session:
        _require_job(session, job_id)
        try:
            moved = retry_job(session, job_id, JobState(from_step) if from_step else None)
        except JobStateError as exc:
            raise ConflictError(str(exc)) from exc
        record_audit(
            session,
            actor.name,
            "job.retry",
            f"job {job_id}",
            client=actor.client,
            detail={"resume_at": moved.state.value, "attempt": moved.attempt},
        )
        session.flush()
        session.expunge(moved)
    return moved


def cancel(sessions: sessionmaker[Session], actor: Actor, job_id: int, reason: str | None = None) -> Job:
    """Stop an unfinished job; a step already running finishes and its outcome is discarded."""
    actor.require(UserRole.OPERATOR, "cancelling a job")
    why = reason or f"cancelled by {actor.name}"
    with sessions.begin() as session:
        _require_job(session, job_id)
        try:
            stopped = cancel_job(session, job_id, why)
        except JobStateError as exc:
            raise ConflictError(str(exc)) from exc
        record_audit(
            session,
            actor.name,
            "job.cancel",
            f"job {job_id}",
            client=actor.client,
            detail={"stopped_at": stopped.failed_step, "reason": why},
        )
        session.flush()
        session.expunge(stopped)
    return stopped


def _require_job(session: Session, job_id: int) -> None:
    if session.get(Job, job_id) is None:
        raise NotFoundError(f"no job {job_id}")
