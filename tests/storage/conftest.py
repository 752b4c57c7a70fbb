"""Fixtures for the storage tests: a migrated SQLite database and a job in any state."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from segnode.storage.database import (
    create_db_engine,
    make_session_factory,
    require_current_schema,
    upgrade_to_head,
)
from segnode.storage.instances import record_instance
from segnode.storage.job_states import JobState
from segnode.storage.jobs import create_job
from tests.storage.records import instance_record, put_job_in


@pytest.fixture(scope="session")
def _migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head; each test gets a copy (migrating takes ~0.1-0.3 s)."""
    database = tmp_path_factory.mktemp("schema") / "segnode.db"
    engine = create_db_engine(f"sqlite:///{database}")
    upgrade_to_head(engine)
    engine.dispose()  # the last connection's close checkpoints the WAL into the file
    return database


@pytest.fixture
def sqlite_sessions(tmp_path: Path, _migrated_database: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions on a fresh SQLite database at the newest schema (with its triggers)."""
    database = tmp_path / "segnode.db"
    shutil.copyfile(_migrated_database, database)
    engine = create_db_engine(f"sqlite:///{database}", sqlite_synchronous="NORMAL")
    require_current_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def new_job(sqlite_sessions: sessionmaker[Session]) -> Callable[..., int]:
    """``new_job(state, series_count) -> job id``: a job over real series rows, in ``state``."""
    created = 0

    def build(state: JobState = JobState.RECEIVED, series_count: int = 1) -> int:
        nonlocal created
        created += 1
        study = f"1.2.{created}"
        with sqlite_sessions.begin() as session:
            recorded = [
                record_instance(session, instance_record(f"{study}.{n}.1", f"{study}.{n}", study))
                for n in range(1, series_count + 1)
            ]
            job = create_job(
                session,
                study_id=recorded[0].study_id,
                trigger="test",
                routing_rule=None,
                series_ids=[r.series_id for r in recorded],
                detail={},
            )
            put_job_in(session, job.id, state)
            return job.id

    return build
