"""A small cluster for the distributed tests: node, workers, PostgreSQL, RabbitMQ, Orthanc.

Every part is real and its own process: ``segnode serve`` (the node, publishing steps),
``segnode worker`` processes (one of them, where asked, inside a network namespace as a
separate host), a private RabbitMQ (``tests/broker.py``), PostgreSQL (the run's database, a
fresh schema per test) and Orthanc as the PACS. The studies are TCGA-FG-6692's native
series written as DICOM (``tests/fixtures/dicom_study.py``), once per study key, so two
studies are two patients' worth of UIDs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import create_engine, text

from tests.broker import Broker
from tests.fixtures.dicom_study import BuiltSeries, PatientTags, build_tcga_study
from tests.helpers import FAST_NODE_TOML, REPO_ROOT, NodeProcess, free_port, wait_for
from tests.netns_host import NetnsHost, TcpRelay
from tests.orthanc import Orthanc

#: Leases short enough that a killed worker's step is taken over within seconds.
LEASE_S = 4.0


@pytest.fixture(scope="session")
def second_tcga_study(
    tmp_path_factory: pytest.TempPathFactory, _strict_pydicom: None, tcga_native: Path
) -> dict[str, BuiltSeries]:
    """The same images as ``tcga_study`` as another patient's study (every UID differs)."""
    patient = PatientTags(
        patient_name="BEISPIEL^MAX", patient_id="SN-SECOND", accession_number="ACC0002"
    )
    return build_tcga_study(tmp_path_factory.mktemp("second_study"), patient, study_key="second")


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """The run's PostgreSQL database with a fresh schema for this test."""
    schema = f"d_{uuid.uuid4().hex[:10]}"
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with engine.connect() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def broker() -> Iterator[Broker]:
    started = Broker().start()
    yield started
    started.remove()


def relayed_url(url: str, relay: TcpRelay) -> str:
    """``url`` with its host and port replaced by the relay's (for the far host)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    host, port = relay.address
    return urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port}"))


def cluster_config(database_url: str, broker_url: str, orthanc_port: int) -> str:
    storage = f'[storage]\ndatabase_url = "{database_url}"\n'
    return FAST_NODE_TOML.replace("[storage]\n", storage, 1) + f"""
[model]
tta = false
[delivery]
initial_backoff_s = 1.0
max_backoff_s = 2.0
max_attempts = 100
[[delivery.destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc_port}
calling_ae = "SEGNODE"
send = ["seg", "sr"]
[jobs]
executor = "celery"
poll_interval_s = 0.3
initial_backoff_s = 1.0
max_attempts = 5
warm_workers = false
[distributed]
broker_url = "{broker_url}"
lease_s = {LEASE_S}
redispatch_s = 20.0
retry_publish_s = 1.0
heartbeat_s = 1.0
"""


@dataclass
class WorkerProcess:
    """``segnode worker`` in its own process group (kill -9 reaches its pool processes too)."""

    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=REPO_ROOT, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, "SEGNODE__WEB__ENABLED": "false"},
        )
        return self

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_path.read_text()[-3000:]
            raise AssertionError(f"worker {self.name} exited ({self.process.returncode}):\n{tail}")

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Cluster:
    tmp_path: Path
    database_url: str
    broker: Broker
    orthanc: Orthanc
    node: NodeProcess
    data_dir: Path
    config_path: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    relays: list[TcpRelay] = field(default_factory=list)

    def start_worker(
        self, name: str, queues: str = "cpu,gpu", host: NetnsHost | None = None
    ) -> WorkerProcess:
        config = self.config_path
        prefix: list[str] = []
        if host is not None:
            database = TcpRelay(host.near_address, _host_port(self.database_url))
            broker = TcpRelay(host.near_address, ("127.0.0.1", self.broker.port))
            self.relays += [database, broker]
            config = self.tmp_path / f"{name}.toml"
            config.write_text(
                self.config_path.read_text()
                .replace(self.database_url, relayed_url(self.database_url, database))
                .replace(self.broker.url, relayed_url(self.broker.url, broker))
            )
            prefix = host.command()
        command = [
            *prefix, sys.executable, "-m", "segnode.node.cli", "worker", "--config", str(config),
            "--data-dir", str(self.data_dir), "--queues", queues, "--name", name,
        ]
        worker = WorkerProcess(name, command, self.tmp_path / f"{name}.log").start()
        self.workers.append(worker)
        return worker

    def sql(self, query: str, **params: Any) -> list[Any]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(query), params).all())
        finally:
            engine.dispose()

    def jobs(self) -> list[Any]:
        try:
            return self.sql("SELECT id, state, error, attempt, step_owner FROM jobs ORDER BY id")
        except Exception:  # the node has not created the schema yet
            return []

    def events(self, job_id: int) -> list[Any]:
        return self.sql(
            "SELECT kind, at, duration_s, detail FROM job_events WHERE job_id = :job ORDER BY id",
            job=job_id,
        )

    def wait_for_job(
        self, predicate: Callable[[Any], bool], what: str, timeout_s: float = 400
    ) -> Any:
        def found() -> Any:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.check_alive()
            for row in self.jobs():
                if row.state == "failed":
                    raise AssertionError(f"job {row.id} failed: {row.error}")
                if predicate(row):
                    return row
            return None

        return wait_for(found, timeout_s, what, interval_s=0.2)

    def wait_all_done(self, count: int, timeout_s: float = 600) -> list[Any]:
        def done() -> list[Any] | None:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.check_alive()
            rows = self.jobs()
            failed = [row for row in rows if row.state == "failed"]
            if failed:
                raise AssertionError(f"failed: {failed}")
            finished = [row for row in rows if row.state == "done"]
            return rows if len(finished) >= count else None

        return wait_for(done, timeout_s, f"{count} jobs done", interval_s=0.5)

    def upload_and_send(self, study: dict[str, BuiltSeries]) -> str:
        files = [path for series in study.values() for path in series.files]
        [orthanc_study] = self.orthanc.upload(files)
        answer = self.orthanc.post(
            "/modalities/segnode/store", {"Resources": [orthanc_study], "Synchronous": True}
        )
        assert answer["FailedInstancesCount"] == 0
        return orthanc_study

    def results_in_pacs(self, orthanc_study: str) -> dict[str, list[str]]:
        """Series description → instance ids of the study's SEG and SR series in Orthanc."""
        found: dict[str, list[str]] = {}
        for series in self.orthanc.get(f"/studies/{orthanc_study}/series"):
            tags = series["MainDicomTags"]
            if tags.get("Modality") in {"SEG", "SR"}:
                found.setdefault(tags.get("SeriesDescription", ""), []).extend(series["Instances"])
        return found


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, broker: Broker) -> Iterator[Cluster]:
    node_port = free_port()
    orthanc = Orthanc(
        tmp_path / "orthanc", modalities={"segnode": ["SEGNODE", "127.0.0.1", node_port]}
    ).start()
    config = tmp_path / "cluster.toml"
    config.write_text(cluster_config(pg_url, broker.url, orthanc.dicom_port))
    data_dir = tmp_path / "data"
    node = NodeProcess(config, data_dir, node_port, tmp_path / "node.log").start()
    running = Cluster(tmp_path, pg_url, broker, orthanc, node, data_dir, config)
    try:
        yield running
    finally:
        for worker in running.workers:
            worker.stop()
        node.stop()
        orthanc.stop()
        for relay in running.relays:
            relay.close()
