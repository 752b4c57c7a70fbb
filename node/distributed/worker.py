"""``segnode worker``: a Celery worker that runs job steps from the resource queues.

Start-up refuses, with the reason, what would fail every step later: a database other
than PostgreSQL, a schema behind the code, a data folder without the node's marker (the
shared filesystem is not mounted here). Then the worker registers its row in ``workers``
and beats it every ``distributed.heartbeat_s`` from its main process, and Celery's prefork
pool runs ``concurrency`` processes, each taking one message at a time.

Pool processes die with the worker's main process (``PR_SET_PDEATHSIG``): a kill -9 of the
worker must stop its steps too, or an orphan would go on writing into a job folder while
another worker runs the same step.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy import Engine

from segnode.config.settings import Settings
from segnode.node.distributed.app import make_celery_app
from segnode.node.distributed.shared_dir import SharedFolderError, check_marker
from segnode.node.distributed.task import configure, register_step_task
from segnode.node.errors import NodeError
from segnode.node.processes import die_with_parent
from segnode.storage.database import make_session_factory, open_database
from segnode.storage.models import utc_now
from segnode.storage.workers import beat, register_worker, worker_stopped

log = logging.getLogger(__name__)

#: What ``--queues`` accepts: the resource names, mapped to the configured queue names.
RESOURCES = ("cpu", "gpu")


class WorkerStartError(NodeError):
    """The worker cannot run steps here; the message says why and what to do."""


def queue_names(settings: Settings, resources: Sequence[str]) -> list[str]:
    """``cpu``/``gpu`` → ``distributed.cpu_queue``/``gpu_queue``.

    Raises:
        WorkerStartError: an unknown resource, or none.
    """
    unknown = sorted(set(resources) - set(RESOURCES))
    if unknown or not resources:
        raise WorkerStartError(
            f"--queues takes {' and/or '.join(RESOURCES)} (comma-separated); got {','.join(resources)!r}"
        )
    mapping = {"cpu": settings.distributed.cpu_queue, "gpu": settings.distributed.gpu_queue}
    return [mapping[resource] for resource in dict.fromkeys(resources)]


def check_worker_settings(settings: Settings) -> None:
    """Raises WorkerStartError for a configuration no worker can run steps with."""
    if not settings.storage.database_url.startswith("postgresql"):
        raise WorkerStartError(
            "segnode worker needs the node's PostgreSQL database (storage.database_url = "
            '"postgresql+psycopg://..."); SQLite cannot be shared between machines'
        )
    try:
        check_marker(Path(settings.storage.data_dir))
    except SharedFolderError as exc:
        raise WorkerStartError(str(exc)) from exc


class _Heartbeat:
    def __init__(self, engine: Engine, name: str, every_s: float) -> None:
        self._sessions = make_session_factory(engine)
        self._name = name
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                with self._sessions.begin() as session:
                    beat(session, self._name, utc_now())
            except Exception as exc:  # the database is away; the row shows the worker lost
                log.warning("heartbeat failed", extra={"error": f"{type(exc).__name__}: {exc}"})


def run_worker(
    settings: Settings, resources: Sequence[str], concurrency: int, name: str | None
) -> int:
    """Run until stopped (SIGTERM: finish the running steps; SIGQUIT/kill: they run again
    elsewhere); returns the exit status.

    Raises:
        WorkerStartError: see :func:`check_worker_settings` and :func:`queue_names`.
    """
    queues = queue_names(settings, resources)
    check_worker_settings(settings)
    hostname = socket.gethostname()
    worker_name = name or f"segnode-{'-'.join(dict.fromkeys(resources))}@{hostname}"
    engine = open_database(settings.storage, migrate=False)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        register_worker(session, worker_name, hostname, list(resources), concurrency, utc_now())

    def _in_pool_process(**_: Any) -> None:
        die_with_parent()
        # The parent's pooled connections came along with the fork: forget them without
        # closing them (closing would end the parent's sessions on the server).
        engine.dispose(close=False)

    worker_process_init.connect(_in_pool_process, weak=False)
    configure(settings, worker_name)
    app = make_celery_app(settings)
    register_step_task(app)
    heartbeat = _Heartbeat(engine, worker_name, settings.distributed.heartbeat_s)
    heartbeat.start()
    log.info(
        "worker starting",
        extra={"worker": worker_name, "queues": queues, "concurrency": concurrency},
    )
    try:
        worker = app.Worker(
            hostname=worker_name if "@" in worker_name else f"{worker_name}@{hostname}",
            queues=queues,
            concurrency=concurrency,
            pool="prefork",
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            loglevel=settings.logging.level,
            quiet=True,
        )
        worker.start()
        exit_code = int(worker.exitcode or 0)
    finally:
        heartbeat.stop()
        with sessions.begin() as session:
            worker_stopped(session, worker_name, utc_now())
        engine.dispose()
        log.info("worker stopped", extra={"worker": worker_name})
    return exit_code
