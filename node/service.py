"""``segnode serve``: the listener, the completion monitor and the job runner in one process.

The pipeline steps themselves run in the job runner's worker processes.

Start-up order matters for crash safety: migrate the schema (this and ``segnode db upgrade``
are the only places that do), reconcile the files with the rows (discard partial writes from
``tmp/``, quarantine files written but never recorded, report rows whose file is gone; none of
it was acknowledged), end the association rows a previous process left open, then start the
monitor (which resumes every receiving study from its stored timers) and the job runner (which
resumes every unfinished job), and only then accept associations. A clean stop ends the rows of
the associations it cut off, so no row stays ``open``.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.admin.accounts import ensure_first_admin
from segnode.node.admin.status import NodeProbe
from segnode.node.completion.monitor import CompletionMonitor
from segnode.node.completion.routing import rule_keywords
from segnode.node.jobs.runner import JobRunner
from segnode.node.receiving.listener_processes import ListenerProcesses
from segnode.node.receiving.receiver import InstanceReceiver
from segnode.node.receiving.scp import StorageSCP
from segnode.node.web.server import WebServer
from segnode.storage.associations import end_open_associations
from segnode.storage.database import make_session_factory, open_database
from segnode.storage.events import record_node_event
from segnode.storage.filestore import FileStore
from segnode.storage.reconcile import reconcile_storage

if TYPE_CHECKING:
    from segnode.node.distributed.dispatcher import StepDispatcher

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
    web: WebServer | None = None
    """The dashboard and REST API (``[web] enabled``), in its own thread."""
    dispatcher: StepDispatcher | None = None
    """Publishes pipeline steps to Celery workers (``jobs.executor = "celery"``)."""
    listeners: ListenerProcesses | None = None
    """The extra listener processes on the same port (``listener.processes`` > 1)."""
    _stopped: bool = field(default=False, init=False, repr=False)

    def stop(self) -> None:
        """Stop accepting, end the open associations' rows, then stop the workers.

        Idempotent: a test (or a signal handler) may stop a node twice.
        """
        if self._stopped:
            return
        self._stopped = True
        if self.web is not None:
            self.web.stop()
        self.scp.stop()
        if self.listeners is not None:
            self.listeners.stop()
        # The listener aborted what was still open; its close handlers may run
        # late or not at all, so the rows are ended here (a late handler finds
        # them ended and changes nothing).
        with self.sessions.begin() as session:
            cut_off = end_open_associations(session)
        if cut_off:
            log.info("associations ended by the stop", extra={"associations_interrupted": cut_off})
        self.receiver.close()
        self.monitor.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.runner.stop()
        self.engine.dispose()
        log.info("node stopped")


def open_storage(settings: Settings) -> tuple[Engine, sessionmaker[Session], FileStore]:
    """Engine (schema migrated), session factory and file store for ``settings``.

    Migrates, as only ``serve`` (and ``segnode db upgrade``) may; the other commands open the
    database without migrating (``segnode.node.cli.options.open_sessions``).
    """
    store = FileStore(
        settings.storage.data_dir,
        fsync=settings.storage.fsync,
        file_group=settings.storage.file_group,
    )
    engine = open_database(settings.storage, migrate=True)
    return engine, make_session_factory(engine), store


def start_node(settings: Settings) -> Node:
    """Open the storage, recover from the last stop, then start the stages (the one place wiring them)."""
    engine, sessions, store = open_storage(settings)
    reconciled = reconcile_storage(store, sessions)
    with sessions.begin() as session:
        interrupted = end_open_associations(session)  # their process died with them
        recovery = {**reconciled.as_detail(), "associations_interrupted": interrupted}
        if any(recovery.values()):
            record_node_event(session, "restart_recovery", recovery)
    log.info("node starting", extra=recovery)
    dispatcher = None
    if settings.jobs.executor == "celery":
        # The node's own steps run here under a claim named after this machine (a restarted
        # node resumes its claims at once); the pipeline's steps go to the workers.
        # Imported here: the embedded default never loads Celery.
        from segnode.node.distributed.dispatcher import StepDispatcher
        from segnode.node.distributed.shared_dir import write_marker

        write_marker(store.data_dir)
        runner = JobRunner(settings, sessions, store, claim_owner=f"node@{socket.gethostname()}")
        dispatcher = StepDispatcher(settings, sessions)
    else:
        runner = JobRunner(settings, sessions, store)

    def on_job() -> None:
        runner.wake()
        if dispatcher is not None:
            dispatcher.wake()

    monitor = CompletionMonitor(
        settings.completion, settings.routing, sessions, settings.selection, on_job=on_job
    )
    receiver = InstanceReceiver(
        store,
        sessions,
        settings.storage,
        extra_keywords=rule_keywords(settings.routing),
        max_dataset_bytes=settings.listener.max_instance_mb * 1024 * 1024,
    )
    several = settings.listener.processes > 1
    scp = StorageSCP(
        settings.listener,
        settings.peers,
        receiver,
        sessions,
        on_association_closed=monitor.wake,
        reuse_port=several,
    )
    monitor.start()
    if settings.jobs.enabled:
        runner.start()  # resumes every unfinished job at the step that had not finished
        if dispatcher is not None:
            dispatcher.start()
    scp.start()
    listeners = None
    if several:
        listeners = ListenerProcesses(settings, rule_keywords(settings.routing))
        listeners.start()
    web = None
    if settings.web.enabled:
        first_admin = ensure_first_admin(sessions, settings.storage.data_dir)
        if first_admin is not None:
            log.warning("dashboard: no users yet; sign in as 'admin' with the password in the file",
                        extra={"password_file": str(first_admin)})
        web = WebServer(
            settings, sessions, NodeProbe(listener_bound=lambda: scp.serving, workers=runner.pool_status)
        )
        try:
            web.start()
        except Exception:
            scp.stop()
            if listeners is not None:
                listeners.stop()
            monitor.stop()
            if dispatcher is not None:
                dispatcher.stop()
            runner.stop()
            raise
    return Node(
        settings, engine, sessions, store, scp, receiver, monitor, runner, web, dispatcher, listeners
    )


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
