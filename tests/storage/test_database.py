"""Schema, recording and the append-only job log, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from segnode.storage.database import (
    create_db_engine,
    current_revision,
    head_revision,
    make_session_factory,
    require_current_schema,
    upgrade_to_head,
)
from segnode.storage.errors import DatabaseSchemaError
from segnode.storage.instances import record_instance
from segnode.storage.jobs import append_job_event, create_job
from segnode.storage.models import Instance, JobEvent, Series, Study, StudyState
from tests.storage.records import instance_record as _record


def test_migrations_reach_head_and_are_idempotent(database_url: str) -> None:
    engine = create_db_engine(database_url)
    with pytest.raises(DatabaseSchemaError, match="segnode db upgrade"):
        require_current_schema(engine)
    upgrade_to_head(engine)
    upgrade_to_head(engine)
    assert current_revision(engine) == head_revision()
    require_current_schema(engine)


def test_instances_group_into_series_and_studies(database_url: str) -> None:
    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        for index in range(3):
            record_instance(session, _record(f"1.2.3.1.{index}"))
        record_instance(session, _record("1.2.3.2.1", series="1.2.3.2"))
    with sessions() as session:
        study = session.execute(select(Study)).scalar_one()
        assert study.received_instances == 4
        assert study.state == StudyState.RECEIVING
        counts = {s.series_instance_uid: s.instance_count for s in study.series}
        assert counts == {"1.2.3.1": 3, "1.2.3.2": 1}
        series = session.execute(select(Series).where(Series.series_instance_uid == "1.2.3.1")).scalar_one()
        assert series.attributes["ImageType"] == ["ORIGINAL", "PRIMARY"]
        assert series.size_bytes == 3000


def test_times_round_trip_as_aware_utc(database_url: str) -> None:
    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    with sessions.begin() as session:
        record_instance(session, _record("1.2.9", when=moment.astimezone(timezone_plus_two())))
    with sessions() as session:
        stored = session.execute(select(Instance.received_at)).scalar_one()
    assert stored == moment and stored.tzinfo is not None


def timezone_plus_two():  # noqa: ANN201 - a tiny local helper
    from datetime import timezone

    return timezone(timedelta(hours=2))


def test_job_events_are_append_only(database_url: str) -> None:
    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        recorded = record_instance(session, _record("1.2.3.1.1"))
        job = create_job(session, study_id=recorded.study_id, trigger="test", routing_rule=None,
                         series_ids=[recorded.series_id], detail={})
        append_job_event(session, job.id, "note", {"x": 1})
    with pytest.raises(DBAPIError, match="append-only"):
        with sessions.begin() as session:
            session.execute(update(JobEvent).values(kind="rewritten"))
    with pytest.raises(DBAPIError, match="append-only"):
        with sessions.begin() as session:
            session.execute(text("DELETE FROM job_events"))
    with sessions() as session:
        kinds = list(session.execute(select(JobEvent.kind).order_by(JobEvent.id)).scalars())
    assert kinds == ["created", "note"]


def test_concurrent_writers_create_one_study(database_url: str) -> None:
    """Eight threads deliver instances of one new study at once: one study, one series row."""
    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    errors: list[BaseException] = []

    def deliver(worker: int) -> None:
        try:
            for index in range(10):
                with sessions.begin() as session:
                    record_instance(session, _record(f"1.2.3.1.{worker}.{index}"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sessions() as session:
        assert session.execute(select(Study.received_instances)).scalar_one() == 80
        assert session.execute(select(Series.instance_count)).scalar_one() == 80


def test_migrations_create_exactly_what_the_models_declare(database_url: str) -> None:
    """Alembic's autogenerate finds nothing to add: a model change without a migration fails."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from segnode.storage.models import Base

    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        differences = [
            diff for diff in compare_metadata(context, Base.metadata)
            if not (isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == "alembic_version")
        ]
    assert differences == []


def test_recording_refuses_to_merge_two_patients_or_two_studies(database_url: str) -> None:
    """The transaction-time check behind the receiver's pre-check (two senders racing)."""
    from dataclasses import replace

    from segnode.storage.errors import IdentityConflictError
    from segnode.storage.instance_writer import InstanceWriter

    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    first = replace(_record("1.2.3.1.1"), patient_key="a" * 32)
    with sessions.begin() as session:
        record_instance(session, first)
    with pytest.raises(IdentityConflictError, match="another patient"), sessions.begin() as session:
        record_instance(session, replace(_record("1.2.3.1.2"), patient_key="b" * 32))
    with pytest.raises(IdentityConflictError, match="another study"), sessions.begin() as session:
        record_instance(session, replace(_record("1.2.3.1.3", study="1.2.4"), patient_key="a" * 32))
    # Through the batching writer, whose series cache must not hide the conflict.
    writer = InstanceWriter(sessions)
    try:
        writer.record(replace(_record("1.2.3.1.4"), patient_key="a" * 32))
        with pytest.raises(IdentityConflictError):
            writer.record(replace(_record("1.2.3.1.5", study="1.2.4"), patient_key="a" * 32))
    finally:
        writer.stop()
    with sessions() as session:
        assert session.execute(select(Instance.sop_instance_uid)).scalars().all() == [
            "1.2.3.1.1", "1.2.3.1.4"
        ]
        assert session.execute(select(Study.study_instance_uid)).scalars().all() == ["1.2.3"]
