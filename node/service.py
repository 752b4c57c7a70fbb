"""``segnode serve``: the listener, the completion monitor and the job runner in one process.

The pipeline steps themselves run in the job runner's worker processes.

Start-up order matters for crash safety: migrate the schema, discard partial
writes from ``tmp/`` (never acknowledged), mark associations left open by a
previous process as interrupted, then start the monitor (which resumes every
receiving study from its stored timers) and the job runner (which resumes every
unfinished job), and only then accept associations.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from types import FrameType

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from node.completion_monitor import CompletionMonitor
from node.job_runner import JobRunner
from node.receiver import InstanceReceiver
from node.routing import rule_keywords
from node.scp import StorageSCP
from storage.database import create_db_engine, make_session_factory, upgrade_to_head
from storage.filestore import FileStore
from storage.ingest import interrupt_open_associations, record_node_event

log = logging.getLogger(__name__)


@dataclass
class Node:
    """A running node; :meth:`stop` shuts it down cleanly."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: FileStore
    scp: StorageSCP
    receiver: InstanceReceiver
    monitor: CompletionMonitor
    runner: JobRunner

    def stop(self) -> None:
        self.scp.stop()
        self.receiver.close()
        self.monitor.stop()
        self.runner.stop()
        self.engine.dispose()
        log.info("node stopped")


def open_storage(settings: Settings) -> tuple[Engine, sessionmaker[Session], FileStore]:
    """Engine (schema migrated), session factory and file store for ``settings``."""
    store = FileStore(settings.storage.data_dir, fsync=settings.storage.fsync)
    engine = create_db_engine(
        settings.storage.resolved_database_url(), settings.storage.sqlite_synchronous.value
    )
    upgrade_to_head(engine)
    return engine, make_session_factory(engine), store


def start_node(settings: Settings) -> Node:
    engine, sessions, store = open_storage(settings)
    partial = store.clear_tmp()
    with sessions.begin() as session:
        interrupted = interrupt_open_associations(session)
        if partial or interrupted:
            record_node_event(
                session,
                "restart_recovery",
                {"partial_files_removed": partial, "associations_interrupted": interrupted},
            )
    log.info(
        "node starting",
        extra={"partial_files_removed": partial, "associations_interrupted": interrupted},
    )
    runner = JobRunner(settings, sessions, store)
    monitor = CompletionMonitor(
        settings.completion, settings.routing, sessions, settings.selection, on_job=runner.wake
    )
    receiver = InstanceReceiver(
        store, sessions, settings.storage, extra_keywords=rule_keywords(settings.routing)
    )
    scp = StorageSCP(
        settings.listener, settings.peers, receiver, sessions, on_association_closed=monitor.wake
    )
    monitor.start()
    if settings.jobs.enabled:
        runner.start()  # resumes every unfinished job at the step that had not finished
    scp.start()
    return Node(settings, engine, sessions, store, scp, receiver, monitor, runner)


def serve_forever(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM."""
    node = start_node(settings)
    stopping = threading.Event()

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    stopping.wait()
    node.stop()
