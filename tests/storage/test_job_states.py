"""The job state machine as a table: one path, every state accounted for, the steps in order."""

from __future__ import annotations

from segnode.pipeline.errors import PipelineError
from segnode.pipeline.steps import STEP_ORDER
from segnode.storage.job_states import (
    ACTIVE,
    CANCELLABLE,
    MACHINE,
    NEXT_STATE,
    RETRYABLE,
    ROW,
    STEP_FOR_STATE,
    TERMINAL,
    TRANSIENT_ERRORS,
    JobState,
)


def test_every_state_is_either_active_or_terminal() -> None:
    assert set(ACTIVE) | TERMINAL == set(JobState)
    assert set(ACTIVE) & TERMINAL == set()


def test_the_machine_is_one_path_from_received_to_done() -> None:
    path = [JobState.RECEIVED]
    while path[-1] in NEXT_STATE:
        path.append(NEXT_STATE[path[-1]])
    assert path == [*ACTIVE, JobState.DONE]
    assert [row.state for row in MACHINE] == list(ACTIVE) == list(ROW)


def test_the_worker_states_run_exactly_the_pipeline_steps_in_order() -> None:
    assert tuple(STEP_FOR_STATE.values()) == STEP_ORDER
    # ... and the node runs the two ends itself: gathering the inputs and sending the results.
    node_states = [row.state for row in MACHINE if row.runs_in == "node"]
    assert node_states == [JobState.RECEIVED, JobState.SENDING]
    assert list(STEP_FOR_STATE) == [state for state in ACTIVE if state not in node_states]


def test_cancel_from_every_active_state_and_retry_only_from_a_stopped_state() -> None:
    assert CANCELLABLE == set(ACTIVE)
    assert RETRYABLE == {JobState.FAILED, JobState.NOT_APPLICABLE, JobState.CANCELLED}
    assert RETRYABLE < TERMINAL  # a done job is never run again: a new run is a new job


def test_a_pipeline_error_is_permanent_and_the_operating_systems_are_transient() -> None:
    assert not issubclass(PipelineError, TRANSIENT_ERRORS)
    assert issubclass(ConnectionRefusedError, TRANSIENT_ERRORS)
    assert issubclass(TimeoutError, TRANSIENT_ERRORS)
