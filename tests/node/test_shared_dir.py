"""The shared data folder as a worker sees it (``node/distributed/shared_dir.py``).

A job folder that is not visible on the worker fails that attempt *transiently*: the job is
postponed with the message naming the folder, never failed (the mount may come back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import JobSettings
from segnode.node.distributed.shared_dir import (
    SharedFolderError,
    check_marker,
    require_job_folder,
    write_marker,
)
from segnode.node.jobs.outcomes import Verdict, record_step_error
from segnode.pipeline.workspace import Workspace
from segnode.storage.job_states import JobState
from segnode.storage.models import Job
from tests.storage.conftest import _migrated_database, new_job, sqlite_sessions  # noqa: F401 (fixtures)


def test_a_job_folder_that_does_not_appear_fails_the_attempt_transiently(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], new_job: Callable[..., int]  # noqa: F811
) -> None:
    job_id = new_job(JobState.CONVERTING)
    started = time.monotonic()
    with pytest.raises(SharedFolderError, match="is not visible on this worker") as raised:
        require_job_folder(Workspace(tmp_path / "jobs" / str(job_id)), timeout_s=1.0)
    assert 1.0 <= time.monotonic() - started < 3.0
    with sqlite_sessions.begin() as session:
        verdict = record_step_error(
            session, job_id, JobState.CONVERTING, raised.value, 1.0, JobSettings()
        )
    assert verdict is Verdict.RETRY_LATER
    with sqlite_sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == JobState.CONVERTING and job.step_attempt == 1
        assert job.next_attempt_at is not None


def test_the_marker_is_what_a_worker_checks(tmp_path: Path) -> None:
    with pytest.raises(SharedFolderError, match="is not the node's data folder"):
        check_marker(tmp_path)
    write_marker(tmp_path)
    assert check_marker(tmp_path)["data_dir"] == str(tmp_path.resolve())
