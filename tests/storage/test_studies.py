"""A receiving study as the completion monitor reads it, and the optimistic moves out of receiving."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from segnode.storage.associations import close_association, record_association_opened
from segnode.storage.instances import record_instance
from segnode.storage.models import AssociationOutcome, NodeEvent, Study, StudyState, utc_now
from segnode.storage.studies import (
    conclude_study,
    receiving_study,
    receiving_study_ids,
    record_deadline_passed,
)
from tests.storage.records import instance_record

Sessions = sessionmaker[Session]


def _receive(sessions: Sessions, sop: str, series: str = "1.2.3.1", **fields: object) -> int:
    with sessions.begin() as session:
        return record_instance(session, replace(instance_record(sop, series), **fields)).study_id


def _study(sessions: Sessions) -> Study:
    with sessions() as session:
        return session.execute(select(Study)).scalar_one()


def test_a_receiving_study_is_read_with_its_series_senders_and_associations(
    sqlite_sessions: Sessions,
) -> None:
    with sqlite_sessions.begin() as session:
        for association_id in ("a-1", "a-2"):
            record_association_opened(
                session,
                association_id,
                calling_ae="PACS",
                called_ae="SEGNODE",
                peer_address="127.0.0.1",
                peer_port=104,
            )
    study_id = _receive(sqlite_sessions, "1.2.3.1.1", association_id="a-1")
    _receive(sqlite_sessions, "1.2.3.1.2", association_id="a-2", called_ae="SEGNODE_PUSH")
    _receive(sqlite_sessions, "1.2.3.2.1", series="1.2.3.2", association_id="a-2", calling_ae="MODALITY")
    with sqlite_sessions.begin() as session:
        close_association(session, "a-1", AssociationOutcome.RELEASED, stored=1, failed=0)

    with sqlite_sessions() as session:
        assert receiving_study_ids(session) == [study_id]
        study = receiving_study(session, study_id)
    assert study is not None
    assert [s.series_instance_uid for s in study.series] == ["1.2.3.1", "1.2.3.2"]
    first, second = study.series
    assert first.instance_count == 2 and first.attributes["Modality"] == "MR"
    assert first.called_ae_titles == {"SEGNODE", "SEGNODE_PUSH"} and first.calling_ae_titles == {"PACS"}
    assert second.calling_ae_titles == {"MODALITY"}
    assert study.open_associations == 1  # a-2 is still open
    assert study.last_association_closed_at is not None
    assert study.last_received_at == _study(sqlite_sessions).last_received_at


def test_an_instance_arriving_while_the_monitor_decides_wins(sqlite_sessions: Sessions) -> None:
    study_id = _receive(sqlite_sessions, "1.2.3.1.1")
    with sqlite_sessions() as session:
        seen = receiving_study(session, study_id)
    assert seen is not None
    _receive(sqlite_sessions, "1.2.3.1.2")  # after the snapshot
    now = utc_now()
    with sqlite_sessions.begin() as session:
        assert not conclude_study(session, seen, StudyState.COMPLETE, reason="quiet", rule=None, at=now)
    assert _study(sqlite_sessions).state == StudyState.RECEIVING

    with sqlite_sessions() as session:
        fresh = receiving_study(session, study_id)
    assert fresh is not None
    with sqlite_sessions.begin() as session:
        assert conclude_study(session, fresh, StudyState.COMPLETE, reason="quiet", rule="brain", at=now)
        # Another monitor with the same snapshot cannot fire it again.
        assert not conclude_study(session, fresh, StudyState.COMPLETE, reason="quiet", rule=None, at=now)
    study = _study(sqlite_sessions)
    assert (study.state, study.state_reason, study.routing_rule, study.times_fired) == (
        StudyState.COMPLETE,
        "quiet",
        "brain",
        1,
    )
    with sqlite_sessions() as session:
        assert receiving_study(session, study_id) is None
        assert receiving_study_ids(session) == []


def test_ignoring_or_discarding_a_study_does_not_count_as_firing(sqlite_sessions: Sessions) -> None:
    study_id = _receive(sqlite_sessions, "1.2.3.1.1")
    with sqlite_sessions.begin() as session:
        seen = receiving_study(session, study_id)
        assert seen is not None
        assert conclude_study(session, seen, StudyState.IGNORED, reason="no rule", rule=None, at=utc_now())
    study = _study(sqlite_sessions)
    assert (study.state, study.times_fired) == (StudyState.IGNORED, 0)


def test_a_passed_deadline_is_noted_once(sqlite_sessions: Sessions) -> None:
    study_id = _receive(sqlite_sessions, "1.2.3.1.1")
    at = utc_now() + timedelta(hours=1)
    with sqlite_sessions.begin() as session:
        assert record_deadline_passed(session, study_id, at, "deadline passed; waiting for flair")
    with sqlite_sessions.begin() as session:
        assert not record_deadline_passed(session, study_id, at + timedelta(seconds=1), "again")
    assert _study(sqlite_sessions).deadline_passed_at == at
    with sqlite_sessions() as session:
        events = session.execute(select(NodeEvent).where(NodeEvent.kind == "deadline_passed"))
        details = [event.detail for event in events.scalars()]
    assert details == [{"reason": "deadline passed; waiting for flair"}]
