"""More listener processes on the node's port (``listener.processes``), for ingest on many cores.

Why processes and not threads: parsing and storing an instance is Python work under the
GIL; one process tops out at one core however many associations it serves. With
``SO_REUSEPORT`` every process binds the same address and the kernel spreads incoming
connections over their sockets, so a sender sees one AE on one port.

What each extra process runs: a listener only (the receiver and the SCP, the same code as
the main process's), writing instances and association rows to the shared database and
store. The completion monitor, the job runner and the web server stay in the main process:
completion reads the rows, not any process's memory, so a study whose series arrived
through different processes is still decided once. Start-up recovery (reconciling the
store, ending stale association rows) is the main process's alone and happens before the
extra processes start. They die with the main process (``PR_SET_PDEATHSIG``), so a kill -9
of the node never leaves an orphan accepting on its port.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from segnode.config.settings import Settings
from segnode.node.logs import configure_logging
from segnode.node.processes import die_with_parent
from segnode.node.receiving.receiver import InstanceReceiver
from segnode.node.receiving.scp import StorageSCP
from segnode.storage.database import make_session_factory, open_database
from segnode.storage.filestore import FileStore

log = logging.getLogger(__name__)


def serve_listener(
    values: dict[str, Any], index: int, extra_keywords: tuple[str, ...], ready: Any
) -> None:
    """Entry point of an extra listener process: serve until SIGTERM.

    ``values`` is the main process's settings as plain data (a loaded ``Settings`` is an
    instance of a per-file subclass, which does not pickle); validated again here.
    """
    die_with_parent()
    settings = Settings.model_validate(values)
    configure_logging(settings.logging.level, settings.logging.format)
    stopping = threading.Event()

    def _request_stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us
    store = FileStore(
        settings.storage.data_dir, fsync=settings.storage.fsync, file_group=settings.storage.file_group
    )
    engine = open_database(settings.storage, migrate=False)
    sessions = make_session_factory(engine)
    receiver = InstanceReceiver(
        store,
        sessions,
        settings.storage,
        extra_keywords=extra_keywords,
        max_dataset_bytes=settings.listener.max_instance_mb * 1024 * 1024,
    )
    scp = StorageSCP(settings.listener, settings.peers, receiver, sessions, reuse_port=True)
    scp.start()
    ready.set()
    log.info("listener process serving", extra={"listener_process": index})
    stopping.wait()
    scp.stop()
    receiver.close()
    engine.dispose()


class ListenerProcesses:
    """``listener.processes - 1`` extra listener processes beside the main one."""

    def __init__(self, settings: Settings, extra_keywords: tuple[str, ...]) -> None:
        self._settings = settings
        self._extra_keywords = extra_keywords
        self._processes: list[BaseProcess] = []

    def start(self, timeout_s: float = 120.0) -> None:
        """Start them and wait until each is accepting (a sender may connect right after).

        Raises:
            RuntimeError: one exited or did not bind within ``timeout_s`` (its log says why).
        """
        context = multiprocessing.get_context("spawn")  # no threads or sockets inherited
        started = []
        for index in range(1, self._settings.listener.processes):
            ready = context.Event()
            process = context.Process(
                target=serve_listener,
                args=(self._settings.model_dump(), index, self._extra_keywords, ready),
                name=f"segnode-listener-{index}",
            )
            process.start()
            self._processes.append(process)
            started.append((index, process, ready))
        deadline = time.monotonic() + timeout_s
        for index, process, ready in started:
            while not ready.wait(0.2):
                if not process.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"listener process {index} did not start (exit code {process.exitcode})"
                    )

    def stop(self) -> None:
        """SIGTERM each (they abort their associations), then wait; kill what hangs."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self._processes.clear()
