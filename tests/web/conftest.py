"""A dashboard application over a real, migrated SQLite database, with one user per role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings, load_settings
from segnode.node.admin.accounts import add_user
from segnode.node.admin.actors import command_line_actor
from segnode.node.service import open_storage
from segnode.node.web.app import create_app
from segnode.storage.instances import record_instance
from segnode.storage.job_states import JobState
from segnode.storage.jobs import create_job
from segnode.storage.models import UserRole
from tests.storage.records import instance_record, put_job_in

PASSWORD = "correct horse battery staple"
#: One user of each role, all with ``PASSWORD``.
USERS = {"vera": UserRole.VIEWER, "otto": UserRole.OPERATOR, "ada": UserRole.ADMIN}


@dataclass
class Dashboard:
    settings: Settings
    sessions: sessionmaker[Session]
    client: Callable[[], TestClient]
    _jobs: int = 0

    def signed_in(self, username: str) -> tuple[TestClient, str]:
        """A client signed in as ``username`` and its CSRF token."""
        client = self.client()
        answer = client.post("/api/session", json={"username": username, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return client, str(answer.json()["csrf_token"])

    def job(self, state: JobState = JobState.RECEIVED, trigger: str = "test") -> int:
        """A job over one recorded instance of a study of its own, driven to ``state``."""
        self._jobs += 1
        study = f"1.2.826.0.1.{self._jobs}"
        with self.sessions.begin() as session:
            recorded = record_instance(session, instance_record(f"{study}.1.1", f"{study}.1", study))
            job = create_job(
                session, study_id=recorded.study_id, trigger=trigger, routing_rule="brain-mr",
                series_ids=[recorded.series_id], detail={},
            )
            put_job_in(session, job.id, state)
            return job.id


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    settings = load_settings(
        None,
        {
            "storage": {"data_dir": str(tmp_path / "data"), "min_free_disk_mb": 1},
            "web": {"enabled": False, "login_max_failures": 3, "login_window_s": 300},
        },
    )
    engine, sessions, _ = open_storage(settings)
    for name, role in USERS.items():
        add_user(sessions, command_line_actor(), name, role, PASSWORD)
    app = create_app(settings, sessions, None)
    clients: list[TestClient] = []

    def client(**options: Any) -> TestClient:
        made = TestClient(app, **options)
        clients.append(made)
        return made

    yield Dashboard(settings, sessions, client)
    for made in clients:
        made.close()
    engine.dispose()
