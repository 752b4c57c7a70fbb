"""The job state machine, as data: states, what runs in each, the next state, the way out.

One table, read by the job runner (``segnode.node.jobs.runner``), the transitions in
``segnode.storage.jobs`` and the CLI, the way pynetdicom keeps its DUL machine in ``fsm.py``::

    received → selecting → converting → preprocessing → inferring → writing → sending → done
        any active state ── permanent error ──► failed      (retry: back to an active state)
        selecting ── a needed sequence missing ─► not_applicable  (retry: back to an active state)
        any active state ── transient error ──► same state, after a backoff (jobs.max_attempts)
        any active state ── cancel ───────────► cancelled   (retry: back to an active state)

Each active state runs one *step*: two run in the node's process because they need the
database or the network (``gather_inputs``, ``send``); the five between them are the
pipeline's steps (``segnode.pipeline.steps.STEP_ORDER``), run in worker processes. A step's
outputs are written first and the state moves on after, in one transaction with its event,
so a killed node resumes every job at the step that had not finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from segnode.config.errors import TransientError


class JobState(StrEnum):
    """Where a job is; stored as the value in ``jobs.state`` (and ``jobs.failed_step``)."""

    RECEIVED = "received"
    SELECTING = "selecting"
    CONVERTING = "converting"
    PREPROCESSING = "preprocessing"
    INFERRING = "inferring"
    WRITING = "writing"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"
    """The study lacks a sequence the model needs (an fMRI study routed by ``brain-mr``):
    nothing went wrong, so it is neither done nor failed, and counted apart."""
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class StateRow:
    """One row of the machine: in ``state``, run ``step`` (in ``runs_in``), then go to ``next``."""

    state: JobState
    step: str
    runs_in: Literal["node", "worker"]
    next: JobState


#: The forward path: every active state, the step it runs and where, the state after it.
MACHINE: tuple[StateRow, ...] = (
    StateRow(JobState.RECEIVED, "gather_inputs", "node", JobState.SELECTING),
    StateRow(JobState.SELECTING, "select", "worker", JobState.CONVERTING),
    StateRow(JobState.CONVERTING, "convert", "worker", JobState.PREPROCESSING),
    StateRow(JobState.PREPROCESSING, "preprocess", "worker", JobState.INFERRING),
    StateRow(JobState.INFERRING, "infer", "worker", JobState.WRITING),
    StateRow(JobState.WRITING, "write", "worker", JobState.SENDING),
    StateRow(JobState.SENDING, "send", "node", JobState.DONE),
)

#: The machine's row for each active state.
ROW: dict[JobState, StateRow] = {row.state: row for row in MACHINE}
#: States a job is still being worked on in, in path order; a retry resumes in one of them.
ACTIVE: tuple[JobState, ...] = tuple(row.state for row in MACHINE)
#: States a job never leaves by itself.
TERMINAL: frozenset[JobState] = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.NOT_APPLICABLE, JobState.CANCELLED}
)
#: Where a step may end a job instead of moving it on: a permanent error, or a study the
#: model does not apply to.
STOPPED_BY_STEP: frozenset[JobState] = frozenset({JobState.FAILED, JobState.NOT_APPLICABLE})
#: Where a finished step takes the job (the only automatic move besides ``failed``).
NEXT_STATE: dict[JobState, JobState] = {row.state: row.next for row in MACHINE}
#: The pipeline step each worker state runs (``segnode.pipeline.steps.<step>``).
STEP_FOR_STATE: dict[JobState, str] = {
    row.state: row.step for row in MACHINE if row.runs_in == "worker"
}

#: Manual transitions (``segnode jobs cancel`` / ``retry``): a cancel from any active state
#: (a step in flight is discarded when it returns); a retry from these, to any active state
#: (the stopped one by default), keeping the earlier steps' outputs and finished deliveries.
#: A not-applicable job can be retried too: after a stand-in is configured, say.
CANCELLABLE: frozenset[JobState] = frozenset(ACTIVE)
RETRYABLE: frozenset[JobState] = frozenset(
    {JobState.FAILED, JobState.NOT_APPLICABLE, JobState.CANCELLED}
)

#: Errors after which a step runs again (after a backoff) instead of failing the job:
#: the operating system's (disk, network), a timeout, memory, and segnode's TransientError
#: (a dead worker process, a step past its timeout). Everything else is permanent.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    MemoryError,
    TransientError,
)
