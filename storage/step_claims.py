"""Who runs a job's current step, when the job's steps run on several machines.

The embedded executor needs none of this: one node process runs every step and claims
jobs in memory. With ``jobs.executor = "celery"`` the node publishes a message per step
("run step S of job J, attempt N", a :class:`StepOrder`), and the broker delivers it *at
least* once: again when a worker dies before acknowledging it, again when the node
publishes it a second time because nobody claimed it. The job row decides which delivery
runs the step:

* :func:`claim_step` locks the row and takes the step for one owner for ``lease_s``
  seconds, or answers that the message is stale (the job moved on, was cancelled or
  retried) or that another owner holds a live lease (the step is running elsewhere);
* the owner renews the lease while the step runs (:func:`renew_claim`); every move of the
  job (``segnode.storage.jobs``) releases it, so a worker whose step was cancelled, or
  taken over after its lease ran out, finds it no longer holds the job
  (:func:`holds_claim`) and discards its result;
* an expired lease means its owner died, or lost the database: the next claim takes the
  step over and counts it as a failed try of the step (as a crashed local worker is), so
  a step that kills every worker that runs it fails the job after ``jobs.max_attempts``.

The node publishes a step only when :func:`mark_dispatched` wins its conditional UPDATE,
so several node processes sharing the database publish each step once per period.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from segnode.storage.database import rowcount
from segnode.storage.job_states import ACTIVE, JobState
from segnode.storage.jobs import append_job_event, fail_job, locked_job
from segnode.storage.models import Job


@dataclass(frozen=True, slots=True)
class StepOrder:
    """What a step message says: run the step of ``state`` for job ``job_id``.

    ``attempt`` (the job's run, raised by a retry) and ``step_attempt`` (failed tries of
    this step) make a message from before a retry or a backoff recognisably stale.
    """

    job_id: int
    state: JobState
    attempt: int
    step_attempt: int

    def as_message(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "attempt": self.attempt,
            "step_attempt": self.step_attempt,
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> StepOrder:
        """Raises ValueError (or KeyError) for a message that is not a step order."""
        state = JobState(str(message["state"]))
        if state not in ACTIVE:
            raise ValueError(f"{state.value} is not a state with a step")
        return cls(
            int(message["job_id"]), state, int(message["attempt"]), int(message["step_attempt"])
        )


class Claim(StrEnum):
    CLAIMED = "claimed"
    """The caller runs the step now."""
    HELD = "held"
    """Another owner holds a live lease: the step is running there."""
    STALE = "stale"
    """The job is no longer at this step of this run (moved on, cancelled, retried, waiting
    out a backoff): the message is dropped."""
    GAVE_UP = "gave_up"
    """The step was taken over from dead owners ``max_attempts`` times: the job failed."""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    held_by: str | None = None
    """With HELD: the owner running the step."""
    lease_remaining_s: float = 0.0
    """With HELD: seconds until that owner's lease runs out."""
    taken_over_from: str | None = None
    """With CLAIMED: the owner whose lease had run out."""


def current_order(job: Job) -> StepOrder:
    return StepOrder(job.id, JobState(job.state), job.attempt, job.step_attempt)


def claim_step(
    session: Session,
    order: StepOrder,
    owner: str,
    lease_s: float,
    now: datetime,
    max_attempts: int,
) -> ClaimResult:
    """Take ``order``'s step for ``owner`` until ``now + lease_s`` (see the module's rules).

    Commit the session right after: the claim is only seen by others once committed.
    """
    job = locked_job(session, order.job_id)
    if job is None or current_order(job) != order:
        return ClaimResult(Claim.STALE)
    if job.next_attempt_at is not None and job.next_attempt_at > now:
        return ClaimResult(Claim.STALE)
    lease_until = job.step_lease_until
    if job.step_owner is not None and job.step_owner != owner:
        if lease_until is not None and lease_until > now:
            return ClaimResult(
                Claim.HELD, job.step_owner, (lease_until - now).total_seconds()
            )
        previous = job.step_owner
        job.step_attempt += 1
        append_job_event(
            session,
            job.id,
            "claim_taken_over",
            {
                "step": order.state.value,
                "from": previous,
                "to": owner,
                "lease_ended": lease_until.isoformat() if lease_until else None,
                "failed_attempts": job.step_attempt,
            },
        )
        if job.step_attempt >= max_attempts:
            session.flush()
            fail_job(
                session,
                job.id,
                order.state,
                f"{order.state.value}: its worker was lost {job.step_attempt} times "
                f"(last {previous}); the step was not tried again",
                None,
            )
            return ClaimResult(Claim.GAVE_UP)
        taken_over_from: str | None = previous
    else:
        taken_over_from = None
    job.step_owner = owner
    job.step_lease_until = now + timedelta(seconds=lease_s)
    job.dispatch_due_at = None
    return ClaimResult(Claim.CLAIMED, taken_over_from=taken_over_from)


def renew_claim(session: Session, job_id: int, owner: str, lease_s: float, now: datetime) -> bool:
    """Extend ``owner``'s lease; False when it no longer holds the job (moved, taken over)."""
    return bool(
        rowcount(
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.step_owner == owner)
                .values(step_lease_until=now + timedelta(seconds=lease_s))
            )
        )
    )


def holds_claim(session: Session, order: StepOrder, owner: str) -> bool:
    """Whether ``owner`` still runs ``order``'s step, its row locked until the commit.

    Called before a step's result is recorded: the result of an owner that lost the job
    (cancelled, retried, taken over) is discarded, never recorded twice.
    """
    job = locked_job(session, order.job_id)
    return (
        job is not None
        and job.step_owner == owner
        and JobState(job.state) is order.state
        and job.attempt == order.attempt
    )


# -- the node's side: publishing each step ---------------------------------------------------


def _unclaimed(now: datetime) -> Any:
    return and_(
        Job.state.in_(ACTIVE),
        or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
        or_(Job.dispatch_due_at.is_(None), Job.dispatch_due_at <= now),
        or_(Job.step_owner.is_(None), Job.step_lease_until <= now),
    )


def dispatchable_orders(
    session: Session, now: datetime, states: Iterable[JobState], limit: int = 100
) -> list[StepOrder]:
    """Steps in ``states`` due now that nobody holds and whose message is due, oldest first."""
    rows = session.execute(
        select(Job.id, Job.state, Job.attempt, Job.step_attempt)
        .where(_unclaimed(now), Job.state.in_(tuple(states)))
        .order_by(Job.id)
        .limit(limit)
    ).all()
    return [StepOrder(row.id, JobState(row.state), row.attempt, row.step_attempt) for row in rows]


def mark_dispatched(session: Session, order: StepOrder, now: datetime, again_s: float) -> bool:
    """Record that ``order``'s message is being published; False if someone else did.

    The message is due again ``again_s`` from now unless a worker claims the step first
    (a claim clears it); publish only after this returned True and was committed.
    """
    return bool(
        rowcount(
            session.execute(
                update(Job)
                .where(
                    Job.id == order.job_id,
                    Job.state == order.state,
                    Job.attempt == order.attempt,
                    Job.step_attempt == order.step_attempt,
                    _unclaimed(now),
                )
                .values(dispatch_due_at=now + timedelta(seconds=again_s))
            )
        )
    )


def reschedule_dispatch(session: Session, order: StepOrder, at: datetime) -> None:
    """The broker refused the message: publish it again at ``at``."""
    session.execute(
        update(Job)
        .where(Job.id == order.job_id, Job.state == order.state, Job.step_owner.is_(None))
        .values(dispatch_due_at=at)
    )
