"""What a worker process does with one step message ("run step S of job J, attempt N").

In order: parse the message (one that is not a step order is logged and dropped); claim
the step on the job's row (``segnode.storage.step_claims``) -- a stale message (the job
moved on) is dropped, a step another live worker holds is retried when that worker's lease
would run out, so a message redelivered after a worker died waits for its lease and then
takes the step over; wait for the job's folder on the shared filesystem; run the step with
its lease renewed meanwhile; then, if this process still holds the claim, record the
outcome exactly as the node's own runner would (``segnode.node.jobs.outcomes``). The
message is acknowledged only after that (late acks), so a kill -9 anywhere before it
means the step runs again, on this or another worker, and is recorded once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.delivery import wanted_output_kinds
from segnode.node.distributed.app import STEP_TASK
from segnode.node.distributed.shared_dir import require_job_folder
from segnode.node.jobs.claim_keeper import ClaimKeeper
from segnode.node.jobs.outcomes import StepOutcome, record_step_error, record_step_result
from segnode.node.jobs.runner import job_workspace
from segnode.node.jobs.worker_pool import StepTimeoutError
from segnode.node.logs import log_context
from segnode.pipeline.steps import StepSettings, run_step
from segnode.storage.database import make_session_factory, open_database
from segnode.storage.job_states import STEP_FOR_STATE
from segnode.storage.models import utc_now
from segnode.storage.step_claims import Claim, StepOrder, claim_step, holds_claim
from segnode.storage.workers import count_step

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a worker process needs for every step: settings, its database engine, its name.

    Made lazily in each pool process (after the fork: an engine's connections must never
    be shared between processes) and remade if the process id changed.
    """

    settings: Settings
    worker_name: str
    pid: int
    engine: Engine
    sessions: sessionmaker[Session]
    step_settings: StepSettings

    @property
    def owner(self) -> str:
        """The claim owner: the worker and this pool process (each process is its own owner,
        so a step whose process was killed is taken over, not silently re-claimed)."""
        return f"{self.worker_name}/{socket.gethostname()}:{self.pid}"


_configured: tuple[Settings, str] | None = None
_context: WorkerContext | None = None


def configure(settings: Settings, worker_name: str) -> None:
    """Called by ``segnode worker`` before its pool processes start."""
    global _configured, _context
    _configured, _context = (settings, worker_name), None


def worker_context() -> WorkerContext:
    global _context
    if _configured is None:
        raise RuntimeError("segnode.node.distributed.task.configure() was not called")
    if _context is None or _context.pid != os.getpid():
        settings, name = _configured
        engine = open_database(settings.storage, migrate=False)
        _context = WorkerContext(
            settings,
            name,
            os.getpid(),
            engine,
            make_session_factory(engine),
            StepSettings.from_settings(settings, wanted_output_kinds(settings)),
        )
    return _context


def register_step_task(app: Celery) -> Task:
    """Add the step task to ``app`` (the worker's side; the node only publishes by name)."""

    @app.task(name=STEP_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def run_step_task(task: Task, message: dict[str, Any]) -> None:
        run_step_message(task, message)

    return run_step_task


def run_step_message(task: Task, message: dict[str, Any]) -> None:
    ctx = worker_context()
    try:
        order = StepOrder.from_message(message)
    except (KeyError, TypeError, ValueError) as exc:
        log.error("not a step message: dropped", extra={"error": f"{type(exc).__name__}: {exc}"})
        return
    if order.state not in STEP_FOR_STATE:
        log.error("a step message for a node step: dropped", extra={"step": order.state.value})
        return
    with log_context(job_id=order.job_id, step=order.state.value):
        _run_order(task, ctx, order)


def _run_order(task: Task, ctx: WorkerContext, order: StepOrder) -> None:
    jobs, distributed = ctx.settings.jobs, ctx.settings.distributed
    with ctx.sessions.begin() as session:
        claimed = claim_step(
            session, order, ctx.owner, distributed.lease_s, utc_now(), jobs.max_attempts
        )
        if claimed.claim is Claim.GAVE_UP:
            count_step(session, ctx.worker_name, failed=True)
    if claimed.claim is Claim.STALE:
        log.info("step message for a job that moved on: dropped")
        return
    if claimed.claim is Claim.GAVE_UP:
        log.warning("step taken over too often: the job failed")
        return
    if claimed.claim is Claim.HELD:
        countdown = max(1.0, claimed.lease_remaining_s + 1.0)
        log.info(
            "step held by another worker; looking again when its lease would end",
            extra={"held_by": claimed.held_by, "countdown_s": round(countdown, 1)},
        )
        raise task.retry(countdown=countdown)
    if claimed.taken_over_from is not None:
        log.warning(
            "step taken over from a lost worker", extra={"from": claimed.taken_over_from}
        )
    workspace = job_workspace(Path(ctx.settings.storage.data_dir), order.job_id)
    keeper = ClaimKeeper(ctx.sessions, order.job_id, ctx.owner, distributed.lease_s)
    started = time.perf_counter()
    error: BaseException | None = None
    record: dict[str, Any] = {}
    with keeper.running():
        try:
            require_job_folder(workspace, distributed.shared_dir_timeout_s)
            record = dict(
                run_step(STEP_FOR_STATE[order.state], workspace.root, ctx.step_settings)
            )
            record["worker"] = ctx.owner
        except SoftTimeLimitExceeded:
            error = StepTimeoutError(
                f"the step ran longer than {jobs.step_timeout_s:g} s on {ctx.owner}; stopped"
            )
        except Exception as exc:
            error = exc
    duration = time.perf_counter() - started
    with ctx.sessions.begin() as session:
        if not holds_claim(session, order, ctx.owner):
            log.warning("the step's claim was lost while it ran: its result is discarded")
            return
        if error is None:
            record_step_result(
                session, order.job_id, order.state, workspace, StepOutcome(record, duration)
            )
        else:
            record_step_error(session, order.job_id, order.state, error, duration, jobs)
        count_step(session, ctx.worker_name, failed=error is not None)
