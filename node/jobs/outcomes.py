"""What a finished or failed step does to its job: one home for both executors.

The node's job runner (embedded executor) and a Celery worker (``segnode worker``) run the
same pipeline steps and must record them the same way: a step's record in the job's event
log and the next state; a permanent error fails the job naming the step; a study without
the needed sequences ends ``not_applicable``; a transient error postpones the step with an
exponential backoff, ``jobs.max_attempts`` times at most. Each function here works inside
the caller's transaction (``sessions.begin()``), so the caller decides what else must be
true in it (the distributed executor first checks that it still holds the step's claim).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from segnode.config.settings import JobSettings
from segnode.node.backoff import backoff_delay_s
from segnode.pipeline.errors import PipelineError, SequencesMissingError
from segnode.pipeline.workspace import Workspace
from segnode.storage.job_states import NEXT_STATE, TRANSIENT_ERRORS, JobState
from segnode.storage.jobs import (
    advance_job,
    conclude_not_applicable,
    fail_job,
    job_progress,
    postpone_step,
    record_models,
    record_quality,
)
from segnode.storage.models import utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepOutcome:
    """A step that returned: its record for the event log and how long it ran."""

    record: dict[str, Any]
    duration_s: float


def record_step_result(
    session: Session, job_id: int, state: JobState, workspace: Workspace, outcome: StepOutcome
) -> bool:
    """Record a finished step and move the job on; False if it moved meanwhile.

    The inferring step's models and the writing step's quality verdict go on the job row
    in the same transaction as the move, read from the files the step left.
    """
    if state is JobState.INFERRING:
        inference = workspace.read_inference()
        record_models(
            session, job_id, [m.id for m in inference.models], inference.primary_model.sha256
        )
    if state is JobState.WRITING and workspace.quality_path.is_file():
        quality = workspace.read_quality()
        record_quality(
            session,
            job_id,
            quality.review_recommended,
            [flag.model_dump(mode="json", exclude_none=True) for flag in quality.flags],
        )
    moved = advance_job(
        session,
        job_id,
        state,
        NEXT_STATE[state],
        {"step": state.value, "record": outcome.record},
        outcome.duration_s,
    )
    if moved:
        log.info(
            "step finished",
            extra={"job_id": job_id, "step": state.value, "duration_s": round(outcome.duration_s, 3)},
        )
    else:  # cancelled (or retried) while the step ran: its outputs are discarded
        log.info("job moved during step", extra={"job_id": job_id, "step": state.value})
    return moved


class Verdict(StrEnum):
    """What :func:`record_step_error` made of a step's exception."""

    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"
    RETRY_LATER = "retry_later"
    GONE = "gone"
    """The job moved meanwhile (cancelled): nothing recorded."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, PipelineError)


def record_step_error(
    session: Session,
    job_id: int,
    state: JobState,
    exc: BaseException,
    duration_s: float,
    jobs: JobSettings,
) -> Verdict:
    """Record a step that raised ``exc``, classified as the module docstring says."""
    if isinstance(exc, SequencesMissingError):
        log.info(
            "job not applicable",
            extra={"job_id": job_id, "step": state.value, "missing": exc.missing},
        )
        conclude_not_applicable(
            session,
            job_id,
            state,
            f"not applicable: {exc}",
            {"missing": list(exc.missing), "series": list(exc.series)},
            duration_s,
        )
        return Verdict.NOT_APPLICABLE
    if isinstance(exc, PipelineError):
        log.warning("job failed", extra={"job_id": job_id, "step": state.value})
        fail_job(session, job_id, state, f"{state.value}: {exc}", duration_s)
        return Verdict.FAILED
    if not is_transient(exc):
        log.error(
            "step crashed",
            exc_info=exc,
            extra={"job_id": job_id, "step": state.value},
        )
        fail_job(
            session,
            job_id,
            state,
            f"{state.value}: unexpected {type(exc).__name__}: {exc}",
            duration_s,
        )
        return Verdict.FAILED
    error = f"{state.value}: {type(exc).__name__}: {exc}"
    progress = job_progress(session, job_id)
    if progress is None or progress.state is not state:
        return Verdict.GONE
    attempts = progress.step_attempt + 1
    if attempts >= jobs.max_attempts:
        log.warning("job failed", extra={"job_id": job_id, "step": state.value})
        fail_job(session, job_id, state, f"{error} (after {attempts} attempts)", duration_s)
        return Verdict.FAILED
    delay = backoff_delay_s(attempts, jobs.initial_backoff_s, jobs.max_backoff_s)
    postpone_step(session, job_id, state, error, utc_now() + timedelta(seconds=delay), duration_s)
    log.warning("step postponed", extra={"job_id": job_id, "step": state.value, "delay_s": delay})
    return Verdict.RETRY_LATER
