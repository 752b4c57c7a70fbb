"""Drives jobs through their states: received → selecting → … → sending → done / failed.

The database holds each job's state; the job folder holds each step's outputs
(``pipeline/workspace.py``). A step's outputs are written first and the state moves on
after, in one transaction with the event that records the step's inputs, decisions,
outputs and duration. So after a kill -9 at any point the job is in the state of the step
that had not finished, and that step runs again from the files the earlier steps left.

Threads: ``jobs.workers`` job threads each take one runnable job at a time and run its
pipeline steps in the worker pool's processes (never in the listener's process). The
inferring step holds a lock: one inference at a time on the node's device, while other
jobs' CPU steps go on. Failures: a ``PipelineError`` is permanent (the job fails at once,
naming the step and cause); an ``OSError``, a dead worker or a timeout is transient (the
step runs again after an exponential backoff, ``jobs.max_attempts`` times at most).

The machine itself (states, steps, next states, which errors are transient) is the table in
``segnode.storage.job_states``; every read and move of a job is a ``segnode.storage.jobs``
function, so this module holds the policy (threads, backoff, the inference lock) and no SQL.

Two executors (``jobs.executor``). ``local``, the default: this runner runs every step,
the pipeline's in its worker pool, and claims jobs in memory (one runner per database).
``celery``: the runner runs only the node's own steps (gathering inputs, sending), and
claims each in the database (``segnode.storage.step_claims``) so that several nodes may
share one; the pipeline's steps are published to Celery workers by
``segnode.node.distributed.dispatcher`` and recorded by them through the same
``segnode.node.jobs.outcomes``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.delivery import wanted_output_kinds
from segnode.node.delivery.sending_step import send_results
from segnode.node.jobs.claim_keeper import ClaimKeeper
from segnode.node.jobs.outcomes import StepOutcome, record_step_error, record_step_result
from segnode.node.jobs.worker_pool import PoolStatus, WorkerPool
from segnode.node.logs import log_context
from segnode.pipeline.steps import StepSettings, run_step, warm_up
from segnode.pipeline.workspace import Inputs, Workspace
from segnode.storage.filestore import FileStore
from segnode.storage.job_states import (
    ACTIVE,
    STEP_FOR_STATE,
    TRANSIENT_ERRORS,
    JobState,
)
from segnode.storage.jobs import (
    advance_job,
    fail_job,
    job_input_files,
    job_progress,
    job_series_ids,
    postpone_sending,
    runnable_job_ids,
)
from segnode.storage.models import Job, utc_now
from segnode.storage.step_claims import Claim, claim_step, current_order

log = logging.getLogger(__name__)


def job_workspace(data_dir: Path, job_id: int) -> Workspace:
    """The job's folder under the data directory (the node's, or a worker's view of the
    shared one), where its steps read and write."""
    return Workspace(data_dir / "jobs" / str(job_id))


#: The states whose step runs in the node's process whatever the executor: they need the
#: database (gathering a job's inputs) or the network (sending its results).
NODE_STATES: tuple[JobState, ...] = (JobState.RECEIVED, JobState.SENDING)


class JobRunner:
    """Runs every job that is due; :meth:`wake` makes it look now instead of at the next poll.

    ``claim_owner`` set (the distributed executor): only :data:`NODE_STATES` run here, each
    under a claim in the database held by that name; without it every state runs here.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: FileStore,
        pool: WorkerPool | None = None,
        claim_owner: str | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._store = store
        self._claim_owner = claim_owner
        self._states: tuple[JobState, ...] = ACTIVE if claim_owner is None else NODE_STATES
        self._pool = (
            pool or WorkerPool(settings.jobs.workers, settings.logging.level, settings.logging.format)
            if claim_owner is None
            else None
        )
        self._step_settings = StepSettings.from_settings(settings, wanted_output_kinds(settings))
        self._inference_lock = threading.Lock()
        self._claimed: set[int] = set()
        self._claim_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._pool is not None and self._settings.jobs.warm_workers:
            self._pool.warm(warm_up, self._step_settings)
        for index in range(self._settings.jobs.workers):
            thread = threading.Thread(target=self._loop, name=f"job-runner-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def pool_status(self) -> PoolStatus:
        """The local worker pool's status; with the distributed executor there is none
        (the workers' health is their heartbeat rows, ``segnode.storage.workers``)."""
        if self._pool is None:
            return PoolStatus(0, "distributed", 0)
        return self._pool.status()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._pool is not None:
            self._pool.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job_id = self._claim()
            if job_id is None:
                self._wake.wait(self._settings.jobs.poll_interval_s)
                self._wake.clear()
                continue
            try:
                with log_context(job_id=job_id):
                    self.run_job(job_id)
            except Exception:  # a bug in the runner must not stop the node's other jobs
                log.exception("job runner error", extra={"job_id": job_id})
                self._stop.wait(self._settings.jobs.poll_interval_s)
            finally:
                with self._claim_lock:
                    self._claimed.discard(job_id)

    def _claim(self) -> int | None:
        with self._claim_lock, self._sessions() as session:
            for job_id in runnable_job_ids(
                session, utc_now(), exclude=self._claimed, states=self._states
            ):
                self._claimed.add(job_id)
                return job_id
        return None

    # -- one job ---------------------------------------------------------------------------
    def run_job(self, job_id: int) -> None:
        """Run the job's steps until it finishes, fails, waits for a retry or is cancelled
        (or, with the distributed executor, reaches a step that workers run)."""
        workspace = job_workspace(self._store.data_dir, job_id)
        while not self._stop.is_set():
            with self._sessions() as session:
                progress = job_progress(session, job_id)
            if progress is None or not progress.due(utc_now()) or progress.state not in self._states:
                return  # gone, finished, waiting out a backoff, or the workers' to run
            if self._claim_owner is None:
                if not self._run_one(job_id, progress.state, workspace):
                    return
                continue
            with self._sessions.begin() as session:
                job = session.get(Job, job_id)
                if job is None:
                    return
                claim = claim_step(
                    session,
                    current_order(job),
                    self._claim_owner,
                    self._settings.distributed.lease_s,
                    utc_now(),
                    self._settings.jobs.max_attempts,
                )
            if claim.claim is not Claim.CLAIMED:
                return  # another node runs it, or the job moved
            keeper = ClaimKeeper(
                self._sessions, job_id, self._claim_owner, self._settings.distributed.lease_s
            )
            with keeper.running():
                if not self._run_one(job_id, progress.state, workspace):
                    return

    def _run_one(self, job_id: int, state: JobState, workspace: Workspace) -> bool:
        """Run the step of ``state``; True when the job moved on and its next step may run."""
        if state is JobState.SENDING:
            return self._send(job_id, workspace)
        started = time.perf_counter()
        try:
            outcome = self._run_state(job_id, state, workspace)
        except Exception as exc:
            if self._stop.is_set() and isinstance(exc, TRANSIENT_ERRORS):
                return False  # the node is stopping: the step runs again at start
            with self._sessions.begin() as session:
                record_step_error(
                    session, job_id, state, exc, time.perf_counter() - started, self._settings.jobs
                )
            return False
        with self._sessions.begin() as session:
            if state is JobState.RECEIVED and set(outcome.record["series_ids"]) != job_series_ids(
                session, job_id
            ):
                return True  # a late series was attached while the inputs were gathered: again
            return record_step_result(session, job_id, state, workspace, outcome)

    def _run_state(self, job_id: int, state: JobState, workspace: Workspace) -> StepOutcome:
        if state is JobState.RECEIVED:
            started = time.perf_counter()
            record = self._gather_inputs(job_id, workspace)
            return StepOutcome(record, time.perf_counter() - started)
        if self._pool is None:  # pragma: no cover - the distributed runner runs node states only
            raise RuntimeError(f"{state.value} runs on the workers, not in the node")
        # One inference at a time on the node's device; the wait for it is not the step's time.
        slot = self._inference_lock if state is JobState.INFERRING else contextlib.nullcontext()
        with slot, log_context(job_id=job_id, step=state.value):  # the pool carries it to the step
            started = time.perf_counter()
            record = self._pool.run(
                self._settings.jobs.step_timeout_s,
                run_step,
                STEP_FOR_STATE[state],
                workspace.root,
                self._step_settings,
            )
        return StepOutcome(record, time.perf_counter() - started)

    def _gather_inputs(self, job_id: int, workspace: Workspace) -> dict[str, Any]:
        """The job's series and their stored files, written where the steps read them."""
        with self._sessions() as session:
            inputs = job_input_files(session, job_id)
        series: dict[str, list[Path]] = {
            uid: [self._store.absolute(file_path) for file_path in files]
            for uid, files in inputs.files.items()
        }
        workspace.write_inputs(Inputs.of(inputs.study_instance_uid, series))
        return {
            "work_dir": str(workspace.root),
            "series_ids": list(inputs.series_ids),
            "series": {uid: len(files) for uid, files in sorted(series.items())},
        }

    def _send(self, job_id: int, workspace: Workspace) -> bool:
        """The sending step; True when the job moved on (done), False when it waits or failed."""
        started = time.perf_counter()
        outcome = send_results(
            self._sessions,
            job_id,
            workspace,
            self._settings.delivery,
        )
        duration = time.perf_counter() - started
        with self._sessions.begin() as session:
            if outcome.pending_until is not None:
                postpone_sending(session, job_id, outcome.pending_until)
                return False
            if outcome.failures:
                causes = "; ".join(
                    f"{name}: {error}" for name, error in sorted(outcome.failures.items())
                )
                fail_job(session, job_id, JobState.SENDING, f"sending: {causes}", duration)
                return False
            done = advance_job(
                session,
                job_id,
                JobState.SENDING,
                JobState.DONE,
                {"step": "sending", "record": {"delivered": outcome.delivered}},
                duration,
            )
        if done:
            self._finished(workspace)
        return done

    def _finished(self, workspace: Workspace) -> None:
        """A done job keeps its records, label map and results; the bulky intermediates go."""
        if not self._settings.jobs.keep_intermediates:
            freed = workspace.prune_intermediates()
            log.info("job folder pruned", extra={"freed_mb": round(freed / 2**20, 1)})
