"""Worker health with the distributed executor: the dashboard, /api/workers, /ready, /metrics.

The rows are what ``segnode worker`` writes (``segnode.storage.workers``); a worker whose
heartbeat is older than three beats is lost. Runs on PostgreSQL, as the executor requires.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from segnode.config.settings import load_settings
from segnode.node.admin.accounts import add_user
from segnode.node.admin.actors import command_line_actor
from segnode.node.service import open_storage
from segnode.node.web.app import create_app
from segnode.storage.models import UserRole, utc_now
from segnode.storage.workers import register_worker, worker_stopped
from tests.web.conftest import PASSWORD


@pytest.fixture
def client(tmp_path: Path, postgres_url: str) -> Iterator[TestClient]:
    schema = f"w_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    settings = load_settings(None, {
        "storage": {"data_dir": str(tmp_path / "data"), "min_free_disk_mb": 1,
                    "database_url": f"{postgres_url}?options=-csearch_path%3D{schema}"},
        "web": {"enabled": False},
        "jobs": {"executor": "celery"},
        "distributed": {"heartbeat_s": 10},
    })
    engine, sessions, _ = open_storage(settings)
    add_user(sessions, command_line_actor(), "otto", UserRole.OPERATOR, PASSWORD)
    now = utc_now()
    with sessions.begin() as session:
        register_worker(session, "cpu-1", "rack-a", ["cpu"], 4, now)
        register_worker(session, "gpu-1", "gpu-room", ["gpu"], 1, now - timedelta(seconds=60))
        register_worker(session, "old", "rack-b", ["cpu", "gpu"], 1, now - timedelta(days=1))
        worker_stopped(session, "old", now - timedelta(hours=20))
    made = TestClient(create_app(settings, sessions, None))
    answer = made.post("/api/session", json={"username": "otto", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    yield made
    made.close()
    engine.dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_workers_show_alive_lost_and_stopped_everywhere(client: TestClient) -> None:
    workers = {w["name"]: w for w in client.get("/api/workers").json()}
    assert {name: w["state"] for name, w in workers.items()} == {
        "cpu-1": "alive", "gpu-1": "lost", "old": "stopped",
    }
    assert workers["cpu-1"]["queues"] == ["cpu"] and workers["cpu-1"]["concurrency"] == 4

    status = client.get("/api/status").json()
    assert status["executor"] == "celery" and len(status["remote_workers"]) == 3
    [check] = [c for c in status["checks"] if c["name"] == "workers"]
    assert check == {"name": "workers", "ok": False, "detail": "no alive worker serves gpu (1 alive)"}
    # Not part of /ready: the node still takes studies while a worker is away.
    assert "workers" not in client.get("/ready").json()["checks"]

    page = client.get("/").text
    assert "Workers (Celery)" in page and "gpu-room" in page and ">lost<" in page

    metrics_text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics_text) for s in family.samples
    }
    assert samples[("segnode_workers", (("state", "alive"),))] == 1
    assert samples[("segnode_workers", (("state", "lost"),))] == 1
    assert samples[("segnode_workers", (("state", "stopped"),))] == 1
