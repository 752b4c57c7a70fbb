"""Pipeline steps run in worker processes, never in the DICOM listener's process.

Why separate processes: a step holds the CPU (and the GIL) for seconds to minutes and
needs gigabytes; the listener must keep answering C-STOREs meanwhile, and a crash in
native code (CUDA, ITK, a corrupt model) must not take the listener down. Workers start
with ``spawn`` so they inherit no threads or sockets from the listener; each keeps its
loaded models between jobs. A worker that dies (killed, out of memory) breaks the pool:
the pool is rebuilt and the caller sees :class:`WorkerCrashedError`, a transient failure.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from node.errors import NodeError

P = ParamSpec("P")
R = TypeVar("R")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs first in every worker: the kernel kills it when the node process dies.

    Without this a worker outlives a kill -9 of the node and goes on writing into the job
    folder while the restarted node runs the same step again.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerCrashedError(NodeError):
    """A worker process died while running a step (transient: the step may run again)."""


class WorkerPool:
    """``workers`` spawned processes; :meth:`run` blocks until one has answered."""

    def __init__(self, workers: int = 1) -> None:
        self._workers = workers
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
        )

    def run(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            pool = self._pool
        try:
            return pool.submit(function, *args, **kwargs).result()
        except BrokenProcessPool as exc:
            with self._lock:
                if self._pool is pool:
                    self._pool = self._new_pool()
            raise WorkerCrashedError(f"the worker process died: {exc}") from exc

    def close(self) -> None:
        """Stop the workers now: a step in flight is abandoned and re-runs after a restart."""
        with self._lock:
            pool = self._pool
        # Python 3.14 has ProcessPoolExecutor.terminate_workers(); 3.11 needs the private map.
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
