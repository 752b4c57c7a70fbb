"""Step claims (``segnode.storage.step_claims``) on both databases, PostgreSQL above all.

What the distributed executor's exactly-once rests on: one claim wins, a live lease makes
others wait, an expired one is taken over and counted, every move releases the claim, a
stale message is recognised, and each step's message is marked for publishing once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from segnode.storage.database import create_db_engine, make_session_factory, upgrade_to_head
from segnode.storage.instances import record_instance
from segnode.storage.job_states import JobState
from segnode.storage.jobs import advance_job, cancel_job, create_job, retry_job
from segnode.storage.models import Job, JobEvent, utc_now
from segnode.storage.step_claims import (
    Claim,
    StepOrder,
    claim_step,
    current_order,
    dispatchable_orders,
    holds_claim,
    mark_dispatched,
    renew_claim,
)
from tests.storage.records import instance_record, put_job_in

LEASE_S = 30.0


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


def job_in(sessions: sessionmaker[Session], state: JobState) -> StepOrder:
    with sessions.begin() as session:
        instance = record_instance(session, instance_record("1.2.9.1.1", "1.2.9.1", "1.2.9"))
        job = create_job(
            session, study_id=instance.study_id, trigger="test", routing_rule=None,
            series_ids=[instance.series_id], detail={},
        )
        put_job_in(session, job.id, state)
        session.flush()
        session.refresh(job)
        return current_order(job)


def claim(sessions: sessionmaker[Session], order: StepOrder, owner: str, at_s: float = 0.0) -> Claim:
    with sessions.begin() as session:
        now = utc_now() + timedelta(seconds=at_s)
        return claim_step(session, order, owner, LEASE_S, now, max_attempts=3).claim


def test_one_claim_wins_a_live_lease_holds_an_expired_one_is_taken_over_and_counted(
    sessions: sessionmaker[Session],
) -> None:
    order = job_in(sessions, JobState.INFERRING)
    assert claim(sessions, order, "w1/a:1") is Claim.CLAIMED
    assert claim(sessions, order, "w2/b:2") is Claim.HELD
    assert claim(sessions, order, "w1/a:1") is Claim.CLAIMED  # its own redelivery
    with sessions.begin() as session:
        result = claim_step(
            session, order, "w2/b:2", LEASE_S, utc_now() + timedelta(seconds=LEASE_S + 1), 3
        )
    assert result.claim is Claim.CLAIMED and result.taken_over_from == "w1/a:1"
    with sessions() as session:
        job = session.get(Job, order.job_id)
        assert job is not None and job.step_owner == "w2/b:2" and job.step_attempt == 1
        kinds = [event.kind for event in session.query(JobEvent).filter_by(job_id=order.job_id)]
        assert kinds.count("claim_taken_over") == 1
        # The loser can neither renew nor record its result.
        assert not renew_claim(session, order.job_id, "w1/a:1", LEASE_S, utc_now())
        assert not holds_claim(session, order, "w1/a:1")
        assert holds_claim(session, order, "w2/b:2")


def test_taken_over_too_often_the_job_fails_naming_the_step(sessions: sessionmaker[Session]) -> None:
    order = job_in(sessions, JobState.PREPROCESSING)
    owners = ["w1/a:1", "w2/b:2", "w3/c:3"]
    results = []
    for index, owner in enumerate(owners):
        with sessions.begin() as session:
            job = session.get(Job, order.job_id)
            assert job is not None
            later = utc_now() + timedelta(seconds=(LEASE_S + 1) * index)
            results.append(claim_step(session, current_order(job), owner, LEASE_S, later, 2).claim)
    assert results == [Claim.CLAIMED, Claim.CLAIMED, Claim.GAVE_UP]
    with sessions() as session:
        job = session.get(Job, order.job_id)
        assert job is not None and job.state == JobState.FAILED
        assert job.error is not None and "worker was lost 2 times" in job.error


def test_every_move_releases_the_claim_and_makes_old_messages_stale(
    sessions: sessionmaker[Session],
) -> None:
    order = job_in(sessions, JobState.CONVERTING)
    assert claim(sessions, order, "w1/a:1") is Claim.CLAIMED
    with sessions.begin() as session:
        assert advance_job(session, order.job_id, JobState.CONVERTING, JobState.PREPROCESSING, {}, 1.0)
        job = session.get(Job, order.job_id)
        assert job is not None and job.step_owner is None and job.step_lease_until is None
    assert claim(sessions, order, "w2/b:2") is Claim.STALE  # a redelivered converting message
    with sessions.begin() as session:
        job = session.get(Job, order.job_id)
        assert job is not None
        preprocessing = current_order(job)
    assert claim(sessions, preprocessing, "w2/b:2") is Claim.CLAIMED
    with sessions.begin() as session:
        cancel_job(session, order.job_id, "test")
    with sessions() as session:
        assert not holds_claim(session, preprocessing, "w2/b:2")  # the cancelled step is discarded
    with sessions.begin() as session:
        retry_job(session, order.job_id)
        job = session.get(Job, order.job_id)
        assert job is not None and job.attempt == 2 and job.step_owner is None
    assert claim(sessions, preprocessing, "w2/b:2") is Claim.STALE  # from before the retry


def test_a_step_is_marked_for_publishing_once_until_it_is_due_again(
    sessions: sessionmaker[Session],
) -> None:
    order = job_in(sessions, JobState.SELECTING)
    now = utc_now()
    with sessions() as session:
        assert dispatchable_orders(session, now, [JobState.SELECTING]) == [order]
    wins: list[bool] = []
    barrier = threading.Barrier(4)

    def race() -> None:
        barrier.wait()
        with sessions.begin() as session:
            wins.append(mark_dispatched(session, order, now, again_s=60))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False, False, False, True]  # two nodes never publish it twice
    with sessions() as session:
        assert dispatchable_orders(session, now, [JobState.SELECTING]) == []
        assert dispatchable_orders(session, now + timedelta(seconds=61), [JobState.SELECTING]) == [order]
    assert claim(sessions, order, "w1/a:1") is Claim.CLAIMED
    with sessions() as session:  # claimed: not published again while the lease holds
        assert dispatchable_orders(session, now + timedelta(seconds=10), [JobState.SELECTING]) == []
        later = now + timedelta(seconds=LEASE_S + 61)
        assert dispatchable_orders(session, later, [JobState.SELECTING]) == [order]
