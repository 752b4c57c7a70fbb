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

One runner per database: jobs are claimed in memory. A site that outgrows one machine
runs the same ``segnode.pipeline.steps.run_step`` on a distributed engine instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.backoff import backoff_delay_s
from segnode.node.delivery import wanted_output_kinds
from segnode.node.delivery.sending_step import send_results
from segnode.node.jobs.worker_pool import PoolStatus, WorkerPool
from segnode.node.logs import log_context
from segnode.pipeline.errors import PipelineError, SequencesMissingError
from segnode.pipeline.steps import StepSettings, run_step, warm_up
from segnode.pipeline.workspace import Inputs, Workspace
from segnode.storage.filestore import FileStore
from segnode.storage.job_states import NEXT_STATE, STEP_FOR_STATE, TRANSIENT_ERRORS, JobState
from segnode.storage.jobs import (
    advance_job,
    conclude_not_applicable,
    fail_job,
    job_input_files,
    job_progress,
    job_series_ids,
    postpone_sending,
    postpone_step,
    record_models,
    record_quality,
    runnable_job_ids,
)
from segnode.storage.models import utc_now

log = logging.getLogger(__name__)


def job_workspace(store: FileStore, job_id: int) -> Workspace:
    """The job's folder under the data directory, where its steps read and write."""
    return Workspace(store.data_dir / "jobs" / str(job_id))


@dataclass(frozen=True)
class _StepOutcome:
    record: dict[str, Any]
    duration_s: float


class JobRunner:
    """Runs every job that is due; :meth:`wake` makes it look now instead of at the next poll."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: FileStore,
        pool: WorkerPool | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._store = store
        self._pool = pool or WorkerPool(
            settings.jobs.workers, settings.logging.level, settings.logging.format
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
        if self._settings.jobs.warm_workers:
            self._pool.warm(warm_up, self._step_settings)
        for index in range(self._settings.jobs.workers):
            thread = threading.Thread(target=self._loop, name=f"job-runner-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def pool_status(self) -> PoolStatus:
        return self._pool.status()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
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
            for job_id in runnable_job_ids(session, utc_now(), exclude=self._claimed):
                self._claimed.add(job_id)
                return job_id
        return None

    # -- one job ---------------------------------------------------------------------------
    def run_job(self, job_id: int) -> None:
        """Run the job's steps until it finishes, fails, waits for a retry or is cancelled."""
        workspace = job_workspace(self._store, job_id)
        while not self._stop.is_set():
            with self._sessions() as session:
                progress = job_progress(session, job_id)
            if progress is None or not progress.due(utc_now()):
                return  # gone, finished, or waiting out a backoff
            state = progress.state
            if state is JobState.SENDING:
                if not self._send(job_id, workspace):
                    return
                continue
            started = time.perf_counter()
            try:
                outcome = self._run_state(job_id, state, workspace)
            except SequencesMissingError as exc:
                self._not_applicable(job_id, state, exc, time.perf_counter() - started)
                return
            except PipelineError as exc:
                self._fail(job_id, state, f"{state.value}: {exc}", time.perf_counter() - started)
                return
            except TRANSIENT_ERRORS as exc:
                if self._stop.is_set():  # the node is stopping: the step runs again at start
                    return
                self._transient(job_id, state, exc, time.perf_counter() - started)
                return
            except Exception as exc:
                log.exception("step crashed", extra={"job_id": job_id, "step": state.value})
                self._fail(
                    job_id,
                    state,
                    f"{state.value}: unexpected {type(exc).__name__}: {exc}",
                    time.perf_counter() - started,
                )
                return
            with self._sessions.begin() as session:
                if state is JobState.RECEIVED and set(
                    outcome.record["series_ids"]
                ) != job_series_ids(session, job_id):
                    continue  # a late series was attached while the inputs were gathered: again
                if state is JobState.INFERRING:
                    inference = workspace.read_inference()
                    record_models(
                        session,
                        job_id,
                        [m.id for m in inference.models],
                        inference.primary_model.sha256,
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
            if not moved:  # cancelled (or retried) while the step ran: its outputs are discarded
                log.info("job moved during step", extra={"job_id": job_id, "step": state.value})
                return
            log.info(
                "step finished",
                extra={
                    "job_id": job_id,
                    "step": state.value,
                    "duration_s": round(outcome.duration_s, 3),
                },
            )

    def _run_state(self, job_id: int, state: JobState, workspace: Workspace) -> _StepOutcome:
        if state is JobState.RECEIVED:
            started = time.perf_counter()
            record = self._gather_inputs(job_id, workspace)
            return _StepOutcome(record, time.perf_counter() - started)
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
        return _StepOutcome(record, time.perf_counter() - started)

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

    def _fail(self, job_id: int, state: JobState, error: str, duration_s: float) -> None:
        log.warning("job failed", extra={"job_id": job_id, "step": state.value})
        with self._sessions.begin() as session:
            fail_job(session, job_id, state, error, duration_s)

    def _not_applicable(
        self, job_id: int, state: JobState, exc: SequencesMissingError, duration_s: float
    ) -> None:
        log.info(
            "job not applicable",
            extra={"job_id": job_id, "step": state.value, "missing": exc.missing},
        )
        with self._sessions.begin() as session:
            conclude_not_applicable(
                session,
                job_id,
                state,
                f"not applicable: {exc}",
                {"missing": list(exc.missing), "series": list(exc.series)},
                duration_s,
            )

    def _transient(
        self, job_id: int, state: JobState, exc: BaseException, duration_s: float
    ) -> None:
        error = f"{state.value}: {type(exc).__name__}: {exc}"
        jobs = self._settings.jobs
        with self._sessions.begin() as session:
            progress = job_progress(session, job_id)
            if progress is None:
                return
            attempts = progress.step_attempt + 1
            if attempts >= jobs.max_attempts:
                fail_job(session, job_id, state, f"{error} (after {attempts} attempts)", duration_s)
                return
            delay = backoff_delay_s(attempts, jobs.initial_backoff_s, jobs.max_backoff_s)
            retry_at: datetime = utc_now() + timedelta(seconds=delay)
            postpone_step(session, job_id, state, error, retry_at, duration_s)
        log.warning(
            "step postponed", extra={"job_id": job_id, "step": state.value, "delay_s": delay}
        )
