"""Pipeline steps run in worker processes, never in the DICOM listener's process.

Why separate processes: a step holds the CPU (and the GIL) for seconds to minutes and
needs gigabytes; the listener must keep answering C-STOREs meanwhile, and a crash in
native code (CUDA, ITK, a corrupt model) must not take the listener down. Workers start
with ``spawn`` so they inherit no threads or sockets from the listener; each keeps its
loaded models between jobs. A worker that dies (killed, out of memory) breaks the pool:
the pool is rebuilt and the caller sees :class:`WorkerCrashedError`, a transient failure.

Logging: a worker's lines are the node's lines. ``spawn`` starts each worker with the node's
file descriptors 0-2 (multiprocessing closes only those above 2), so a worker's stderr is
the node's stderr: the journal under systemd, the log file ``segnode serve`` was started
with. Each worker sets up the node's handler, level and format on that stream
(:func:`_start_worker`), and every call runs inside the caller's log context
(:func:`segnode.node.logs.log_context`), so a step's lines carry the job id and step of
the runner thread that asked for it, as if the step ran in that thread. Why not records
shipped to the node through a queue: a worker killed mid-write (a timeout, the OOM killer)
can leave a multiprocessing queue half-written or its lock held, stalling every other
worker's logging; a line to an inherited descriptor needs no lock and no reader. What
this does not follow: a handler the node adds at the Python level only (a replaced
``sys.stderr``, a file handler); the node has none, its log is its stderr.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Generic, ParamSpec, TypeVar

from segnode.config.errors import TransientError
from segnode.node.errors import NodeError
from segnode.node.logs import configure_logging, current_log_context, log_context
from segnode.node.processes import die_with_parent

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _start_worker(log_level: str, log_format: str) -> None:
    """Runs first in every worker: die with the node, log like the node.

    Why the logging: a spawned process starts with Python's defaults, so pydicom's
    value-quoting warnings and a step's own lines would reach the node's stderr
    as raw text. The same setup as ``segnode serve`` makes them JSON, with
    third-party text withheld.
    """
    die_with_parent()
    configure_logging(log_level, log_format)


@dataclass(frozen=True)
class _InLogContext(Generic[P, R]):
    """What a worker runs: ``function`` with the caller's log fields on every line it logs.

    A block, not a binding: the worker's next call (another job's step) starts clean. A
    class rather than a closure so it pickles (by reference to ``function``).
    """

    fields: Mapping[str, object]
    function: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        with log_context(**self.fields):
            return self.function(*args, **kwargs)


def _portable(fields: Mapping[str, object]) -> dict[str, object]:
    """Log fields that cross to a worker as they are (ids, names, numbers); others as text."""
    return {
        key: value if value is None or isinstance(value, str | int | float | bool) else str(value)
        for key, value in fields.items()
    }


class WorkerCrashedError(NodeError, TransientError):
    """A worker process died while running a step (transient: the step may run again)."""


class StepTimeoutError(NodeError, TransientError, TimeoutError):
    """A step ran past ``jobs.step_timeout_s`` (transient: it runs again after a backoff)."""


class WorkerPool:
    """``workers`` spawned processes; :meth:`run` blocks until one has answered."""

    def __init__(self, workers: int = 1, log_level: str = "INFO", log_format: str = "json") -> None:
        self._workers = workers
        self._log_settings = (log_level, log_format)
        self._lock = threading.Lock()
        self._warm_up: tuple[Callable[..., object], tuple[object, ...]] | None = None
        self._warm_state = "cold"
        self._replacements = 0
        self._pool = self._new_pool()

    def status(self) -> PoolStatus:
        """What the dashboard and ``/ready`` show: how many workers, warm or not, replaced how often."""
        with self._lock:
            return PoolStatus(self._workers, self._warm_state, self._replacements)

    def warm(self, function: Callable[..., object], *args: object) -> None:
        """Start the workers now and run ``function(*args)`` in each, now and in every
        replacement pool (after a crash or a timeout), without waiting for it.

        Why: a spawned worker pays for importing torch and MONAI and loading the models on
        its first step (seconds on 2 cores); warmed when the node starts, the first job's
        steps find them loaded. The warm-up is queued like a step, so a step submitted
        meanwhile waits behind it, never beside it. Its failure is logged and changes
        nothing: the step that needs the model then loads it (and reports a real error).
        """
        with self._lock:
            self._warm_up = (function, args)
            pool = self._pool
        self._submit_warm_up(pool)

    def _submit_warm_up(self, pool: ProcessPoolExecutor) -> None:
        if self._warm_up is None:
            return
        function, args = self._warm_up
        with self._lock:
            self._warm_state = "warming"
        for _ in range(self._workers):
            try:
                future = pool.submit(function, *args)
            except RuntimeError:  # the pool was shut down meanwhile (the node is stopping)
                return
            future.add_done_callback(_log_warm_up)
            future.add_done_callback(self._note_warm_up)

    def _note_warm_up(self, future: Future[object]) -> None:
        if future.cancelled():
            return
        with self._lock:
            self._warm_state = "failed" if future.exception() is not None else "warm"

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=self._log_settings,
        )

    def run(
        self,
        timeout_s: float | None,
        function: Callable[P, R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """``function(*args, **kwargs)`` in a worker; a step past ``timeout_s`` is killed.

        The caller's log context goes with the call: what ``function`` logs carries the
        fields of the :func:`~segnode.node.logs.log_context` blocks around this call (the
        job runner's ``job_id`` and ``step``).

        Raises:
            WorkerCrashedError: the worker died (transient).
            StepTimeoutError: the step ran past ``timeout_s``; its worker was killed (transient).
        """
        with self._lock:
            pool = self._pool
        fields = _portable(current_log_context())
        future = pool.submit(_InLogContext(fields, function), *args, **kwargs)
        try:
            return future.result(timeout=timeout_s)
        except BrokenProcessPool as exc:
            self._replace(pool)
            raise WorkerCrashedError(f"the worker process died: {exc}") from exc
        except TimeoutError as exc:
            if future.done():  # the step itself raised TimeoutError
                raise
            self._replace(pool)
            raise StepTimeoutError(
                f"the step ran longer than {timeout_s:g} s; its worker was stopped"
            ) from exc

    def _replace(self, pool: ProcessPoolExecutor) -> None:
        """A broken or hung pool is killed and replaced (other jobs' steps in it re-run);
        the replacement is warmed like the first pool."""
        replacement = None
        with self._lock:
            if self._pool is pool:
                self._pool = replacement = self._new_pool()
                self._replacements += 1
                self._warm_state = "cold"
        _terminate(pool)
        if replacement is not None:
            self._submit_warm_up(replacement)

    def close(self) -> None:
        """Stop the workers now: a step in flight is abandoned and re-runs after a restart."""
        with self._lock:
            pool = self._pool
        _terminate(pool)


@dataclass(frozen=True, slots=True)
class PoolStatus:
    workers: int
    warm_state: str
    """``cold`` (not warmed, or replaced and not warmed yet), ``warming``, ``warm``, ``failed``."""
    replacements: int
    """Pools replaced since the start (a worker crashed or a step timed out)."""


def _log_warm_up(future: Future[object]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.warning("worker warm-up failed", extra={"error": f"{type(error).__name__}: {error}"})
    else:
        log.info("worker warm", extra={"warm_up": future.result()})


def _terminate(pool: ProcessPoolExecutor) -> None:
    # Python 3.14 has ProcessPoolExecutor.terminate_workers(); 3.11 needs the private map.
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
