"""Every transition of the job state machine, on SQLite, in seconds (no DICOM, no pipeline).

The runner's moves (``advance_job``, ``fail_job``, ``postpone_step``, ``postpone_sending``) and
the operator's (``cancel_job``, ``retry_job``), what each writes to the job's log, and what the
runner reads (``runnable_job_ids``, ``job_progress``, ``job_input_files``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from segnode.storage.database import create_db_engine, make_session_factory, upgrade_to_head
from segnode.storage.errors import JobStateError
from segnode.storage.instances import record_instance
from segnode.storage.job_states import ACTIVE, MACHINE, NEXT_STATE, TERMINAL, JobState
from segnode.storage.jobs import (
    advance_job,
    cancel_job,
    conclude_not_applicable,
    create_job,
    ensure_deliveries,
    fail_job,
    job_input_files,
    job_progress,
    postpone_sending,
    postpone_step,
    record_models,
    retry_job,
    runnable_job_ids,
)
from segnode.storage.models import DeliveryState, Job, JobDelivery, JobEvent, utc_now
from tests.storage.records import instance_record, put_job_in

NewJob = Callable[..., int]
Sessions = sessionmaker[Session]


def _job(sessions: Sessions, job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _events(sessions: Sessions, job_id: int) -> list[JobEvent]:
    with sessions() as session:
        return list(
            session.execute(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            ).scalars()
        )


# -- advance_job ---------------------------------------------------------------------------


def test_a_job_advances_along_the_whole_machine_logging_each_step(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job()
    for row in MACHINE:
        with sqlite_sessions.begin() as session:
            assert advance_job(session, job_id, row.state, row.next, {"step": row.state.value}, 0.5)
        assert _job(sqlite_sessions, job_id).state is row.next
    job = _job(sqlite_sessions, job_id)
    assert job.state is JobState.DONE and job.finished_at is not None
    events = _events(sqlite_sessions, job_id)
    assert [e.kind for e in events] == ["created", *(row.next.value for row in MACHINE)]
    assert [e.detail["from"] for e in events[1:]] == [state.value for state in ACTIVE]
    assert all(e.duration_s == 0.5 for e in events[1:])


def test_advancing_from_a_state_the_job_is_no_longer_in_changes_nothing(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    """A step returning after its job was cancelled or retried: its outcome is discarded."""
    job_id = new_job(JobState.PREPROCESSING)
    with sqlite_sessions.begin() as session:
        cancel_job(session, job_id, "operator")
    with sqlite_sessions.begin() as session:
        moved = advance_job(
            session, job_id, JobState.PREPROCESSING, JobState.INFERRING, {}, None
        )
    assert moved is False
    assert _job(sqlite_sessions, job_id).state is JobState.CANCELLED
    assert _events(sqlite_sessions, job_id)[-1].kind == "cancelled"


@pytest.mark.parametrize(
    ("expected", "to"),
    [
        (JobState.RECEIVED, JobState.CONVERTING),  # skipping a step
        (JobState.SELECTING, JobState.RECEIVED),  # backwards (only a retry goes back)
        (JobState.INFERRING, JobState.DONE),  # done only after sending
        (JobState.SELECTING, JobState.CANCELLED),  # cancelling is the operator's (cancel_job)
        (JobState.DONE, JobState.FAILED),  # out of a terminal state
        (JobState.FAILED, JobState.SELECTING),  # retrying is the operator's (retry_job)
    ],
)
def test_a_move_that_is_not_in_the_machine_is_refused(
    sqlite_sessions: Sessions, new_job: NewJob, expected: JobState, to: JobState
) -> None:
    job_id = new_job(expected)
    with pytest.raises(JobStateError, match="no transition"), sqlite_sessions.begin() as session:
        advance_job(session, job_id, expected, to, {}, None)
    assert _job(sqlite_sessions, job_id).state is expected


def test_advancing_resets_the_step_retries_and_sets_further_columns(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(JobState.CONVERTING)
    with sqlite_sessions.begin() as session:
        postpone_step(session, job_id, JobState.CONVERTING, "OSError", utc_now(), None)
    with sqlite_sessions.begin() as session:
        assert advance_job(
            session, job_id, JobState.CONVERTING, JobState.PREPROCESSING, {}, None, error="kept"
        )
    job = _job(sqlite_sessions, job_id)
    assert (job.step_attempt, job.next_attempt_at, job.error) == (0, None, "kept")


def test_the_state_column_reads_back_as_a_job_state_and_refuses_anything_else(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job()
    assert type(_job(sqlite_sessions, job_id).state) is JobState
    with pytest.raises(StatementError, match="'paused' is not a valid JobState"):
        with sqlite_sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(state="paused"))


# -- fail_job, postpone_step, postpone_sending, record_models ------------------------------


@pytest.mark.parametrize("state", ACTIVE)
def test_a_permanent_failure_stops_the_job_naming_the_step_and_cause(
    sqlite_sessions: Sessions, new_job: NewJob, state: JobState
) -> None:
    job_id = new_job(state)
    with sqlite_sessions.begin() as session:
        assert fail_job(session, job_id, state, f"{state.value}: missing FLAIR", 1.5)
    job = _job(sqlite_sessions, job_id)
    assert (job.state, job.failed_step, job.error) == (
        JobState.FAILED,
        state.value,
        f"{state.value}: missing FLAIR",
    )
    assert job.finished_at is not None
    last = _events(sqlite_sessions, job_id)[-1]
    assert (last.kind, last.detail["step"], last.detail["from"]) == ("failed", state.value, state.value)


def test_failing_from_a_state_the_job_left_changes_nothing(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(JobState.WRITING)
    with sqlite_sessions.begin() as session:
        assert not fail_job(session, job_id, JobState.INFERRING, "late", None)
    assert _job(sqlite_sessions, job_id).state is JobState.WRITING


def test_a_transient_failure_postpones_the_same_step_counting_the_attempts(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(JobState.INFERRING)
    first, second = utc_now() + timedelta(seconds=2), utc_now() + timedelta(seconds=4)
    with sqlite_sessions.begin() as session:
        assert postpone_step(session, job_id, JobState.INFERRING, "inferring: OSError", first, 0.2)
    with sqlite_sessions.begin() as session:
        assert postpone_step(session, job_id, JobState.INFERRING, "inferring: OSError", second, 0.2)
    job = _job(sqlite_sessions, job_id)
    assert (job.state, job.step_attempt, job.next_attempt_at) == (JobState.INFERRING, 2, second)
    retries = [e for e in _events(sqlite_sessions, job_id) if e.kind == "step_retry"]
    assert [e.detail["failed_attempts"] for e in retries] == [1, 2]
    assert retries[-1].detail == {
        "step": "inferring",
        "error": "inferring: OSError",
        "failed_attempts": 2,
        "retry_at": second.isoformat(),
    }


def test_postponing_a_step_of_a_job_that_moved_changes_nothing(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(JobState.CANCELLED)
    with sqlite_sessions.begin() as session:
        assert not postpone_step(session, job_id, JobState.SELECTING, "OSError", utc_now(), None)
    job = _job(sqlite_sessions, job_id)
    assert (job.step_attempt, job.next_attempt_at) == (0, None)


def test_sending_waits_for_a_destination_only_while_the_job_is_sending(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    sending, cancelled = new_job(JobState.SENDING), new_job(JobState.CANCELLED)
    until = utc_now() + timedelta(minutes=1)
    with sqlite_sessions.begin() as session:
        assert postpone_sending(session, sending, until)
        assert not postpone_sending(session, cancelled, until)
    assert _job(sqlite_sessions, sending).next_attempt_at == until
    assert _job(sqlite_sessions, cancelled).next_attempt_at is None
    assert _events(sqlite_sessions, sending)[-1].kind == "sending"  # no event: not a failure


def test_the_models_that_segmented_a_job_are_recorded(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(JobState.INFERRING)
    with sqlite_sessions.begin() as session:
        record_models(session, job_id, ["segnode-a", "segnode-b"], "f" * 64)
    job = _job(sqlite_sessions, job_id)
    assert (job.model_id, job.model_sha256) == ("segnode-a+segnode-b", "f" * 64)


# -- cancel_job ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", ACTIVE)
def test_a_job_can_be_cancelled_from_every_active_state(
    sqlite_sessions: Sessions, new_job: NewJob, state: JobState
) -> None:
    job_id = new_job(state)
    with sqlite_sessions.begin() as session:
        postpone_step(session, job_id, state, "OSError", utc_now() + timedelta(hours=1), None)
    with sqlite_sessions.begin() as session:
        cancel_job(session, job_id, "wrong patient")
    job = _job(sqlite_sessions, job_id)
    assert (job.state, job.failed_step, job.next_attempt_at) == (JobState.CANCELLED, state.value, None)
    assert job.finished_at is not None
    last = _events(sqlite_sessions, job_id)[-1]
    assert (last.kind, last.detail) == ("cancelled", {"from": state.value, "reason": "wrong patient"})


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_a_finished_job_cannot_be_cancelled(
    sqlite_sessions: Sessions, new_job: NewJob, state: JobState
) -> None:
    job_id = new_job(state)
    events_before = len(_events(sqlite_sessions, job_id))
    with pytest.raises(JobStateError, match="only an unfinished job can be cancelled"):
        with sqlite_sessions.begin() as session:
            cancel_job(session, job_id, "too late")
    assert _job(sqlite_sessions, job_id).state is state
    assert len(_events(sqlite_sessions, job_id)) == events_before


def test_cancelling_or_retrying_a_job_that_does_not_exist_says_so(sqlite_sessions: Sessions) -> None:
    with pytest.raises(JobStateError, match="no job 99"), sqlite_sessions.begin() as session:
        cancel_job(session, 99, "none")
    with pytest.raises(JobStateError, match="no job 99"), sqlite_sessions.begin() as session:
        retry_job(session, 99)


# -- retry_job -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", [JobState.FAILED, JobState.NOT_APPLICABLE, JobState.CANCELLED])
def test_a_retry_resumes_at_the_state_that_stopped(
    sqlite_sessions: Sessions, new_job: NewJob, how: JobState
) -> None:
    job_id = new_job(JobState.CONVERTING)
    with sqlite_sessions.begin() as session:
        if how is JobState.FAILED:
            fail_job(session, job_id, JobState.CONVERTING, "converting: bad spacing", None)
        elif how is JobState.NOT_APPLICABLE:
            conclude_not_applicable(session, job_id, JobState.CONVERTING, "not applicable: no T1c", {}, None)
        else:
            cancel_job(session, job_id, "pause")
    with sqlite_sessions.begin() as session:
        retry_job(session, job_id)
    job = _job(sqlite_sessions, job_id)
    assert (job.state, job.attempt, job.step_attempt) == (JobState.CONVERTING, 2, 0)
    assert (job.failed_step, job.error, job.finished_at, job.next_attempt_at) == (None, None, None, None)
    last = _events(sqlite_sessions, job_id)[-1]
    assert (last.kind, last.detail) == (
        "retry",
        {"from": how.value, "resume_at": "converting", "attempt": 2},
    )
    with sqlite_sessions() as session:
        assert runnable_job_ids(session, utc_now()) == [job_id]


def test_a_retry_may_resume_at_an_explicit_state(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(JobState.FAILED)  # failed at selecting
    with sqlite_sessions.begin() as session:
        retry_job(session, job_id, JobState.WRITING)
    assert _job(sqlite_sessions, job_id).state is JobState.WRITING
    with pytest.raises(JobStateError, match="only a failed, not applicable or cancelled job"):
        with sqlite_sessions.begin() as session:
            retry_job(session, job_id, JobState.RECEIVED)  # it is active again now


def test_a_retry_cannot_resume_at_a_finished_state(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(JobState.FAILED)
    with pytest.raises(JobStateError, match="cannot resume job"), sqlite_sessions.begin() as session:
        retry_job(session, job_id, JobState.DONE)
    assert _job(sqlite_sessions, job_id).state is JobState.FAILED


@pytest.mark.parametrize("state", [*ACTIVE, JobState.DONE])
def test_only_a_failed_or_cancelled_job_can_be_retried(
    sqlite_sessions: Sessions, new_job: NewJob, state: JobState
) -> None:
    job_id = new_job(state)
    with pytest.raises(JobStateError, match="only a failed, not applicable or cancelled job can be retried"):
        with sqlite_sessions.begin() as session:
            retry_job(session, job_id)
    job = _job(sqlite_sessions, job_id)
    assert (job.state, job.attempt) == (state, 1)


def test_a_retry_sends_again_only_to_the_destinations_that_failed(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(JobState.SENDING)
    with sqlite_sessions.begin() as session:
        pacs, archive = ensure_deliveries(session, job_id, ["pacs", "archive"])
        pacs.state, pacs.attempts = DeliveryState.DELIVERED.value, 1
        archive.state, archive.attempts = DeliveryState.FAILED.value, 5
        fail_job(session, job_id, JobState.SENDING, "sending: archive: refused", None)
    with sqlite_sessions.begin() as session:
        retry_job(session, job_id)
    with sqlite_sessions() as session:
        rows = {
            row.destination: (row.state, row.attempts)
            for row in session.execute(select(JobDelivery)).scalars()
        }
    assert rows == {"pacs": ("delivered", 1), "archive": ("pending", 0)}
    assert _job(sqlite_sessions, job_id).state is JobState.SENDING


# -- what the runner reads -----------------------------------------------------------------


def test_runnable_jobs_are_the_active_ones_due_now_oldest_first(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    due = new_job()
    later = new_job(JobState.CONVERTING)
    backed_off = new_job(JobState.INFERRING)
    finished = [new_job(state) for state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)]
    now = utc_now()
    with sqlite_sessions.begin() as session:
        postpone_step(session, later, JobState.CONVERTING, "OSError", now + timedelta(minutes=5), None)
        postpone_step(session, backed_off, JobState.INFERRING, "OSError", now - timedelta(seconds=1), None)
    with sqlite_sessions() as session:
        assert runnable_job_ids(session, now) == [due, backed_off]
        assert runnable_job_ids(session, now, exclude=[due]) == [backed_off]
        assert runnable_job_ids(session, now + timedelta(minutes=6)) == [due, later, backed_off]
        assert not set(finished) & set(runnable_job_ids(session, now + timedelta(days=1)))


def test_job_progress_says_whether_a_step_is_due(sqlite_sessions: Sessions, new_job: NewJob) -> None:
    job_id, done = new_job(JobState.WRITING), new_job(JobState.DONE)
    now = utc_now()
    with sqlite_sessions.begin() as session:
        postpone_step(session, job_id, JobState.WRITING, "OSError", now + timedelta(seconds=30), None)
    with sqlite_sessions() as session:
        progress = job_progress(session, job_id)
        finished = job_progress(session, done)
        assert job_progress(session, 99) is None
    assert progress is not None and finished is not None
    assert (progress.state, progress.step_attempt) == (JobState.WRITING, 1)
    assert not progress.due(now) and progress.due(now + timedelta(seconds=30))
    assert not finished.due(now)


def test_the_inputs_of_a_job_are_its_series_stored_files(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    job_id = new_job(series_count=2)
    new_job()  # another study's job: none of its files
    with sqlite_sessions() as session:
        inputs = job_input_files(session, job_id)
    assert inputs.study_instance_uid == "1.2.1"
    assert len(inputs.series_ids) == 2 and list(inputs.series_ids) == sorted(inputs.series_ids)
    assert inputs.files == {
        "1.2.1.1": ["1.2.1/1.2.1.1/1.2.1.1.1.dcm"],
        "1.2.1.2": ["1.2.1/1.2.1.2/1.2.1.2.1.dcm"],
    }


def test_the_next_state_of_every_active_state_is_reachable_by_advance(
    sqlite_sessions: Sessions, new_job: NewJob
) -> None:
    """Each row on its own, from a job created in that state (not only as one long walk)."""
    for state in ACTIVE:
        job_id = new_job(state)
        with sqlite_sessions.begin() as session:
            assert advance_job(session, job_id, state, NEXT_STATE[state], {}, None)
        assert _job(sqlite_sessions, job_id).state is NEXT_STATE[state]


def test_the_locked_moves_and_the_state_column_work_on_both_backends(database_url: str) -> None:
    """``FOR UPDATE`` is real on PostgreSQL (SQLite's BEGIN IMMEDIATE serialises instead)."""
    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        recorded = record_instance(session, instance_record("1.2.3.1.1"))
        job_id = create_job(
            session,
            study_id=recorded.study_id,
            trigger="test",
            routing_rule=None,
            series_ids=[recorded.series_id],
            detail={},
        ).id
        put_job_in(session, job_id, JobState.PREPROCESSING)
    with sessions.begin() as session:
        assert postpone_step(session, job_id, JobState.PREPROCESSING, "OSError", utc_now(), None)
    with sessions.begin() as session:
        cancel_job(session, job_id, "test")
    with sessions.begin() as session:
        retry_job(session, job_id)
    job = _job(sessions, job_id)
    assert type(job.state) is JobState
    assert (job.state, job.attempt, job.step_attempt) == (JobState.PREPROCESSING, 2, 0)
    engine.dispose()
