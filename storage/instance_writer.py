"""Group commit for received instances: one transaction for everyone waiting.

Why: every C-STORE must be committed before its Success goes out, and with
SQLite each commit is an fsync under the database's single write lock. With
several associations in flight, per-instance transactions queue on that lock
one fsync at a time. A single writer thread takes every row waiting, writes
them in one transaction (if that fails, each row again alone, so one bad
row fails alone) and wakes each caller only after the commit. Same durability, a
fraction of the commits.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from segnode.storage.instances import InstanceRecord, RecordedInstance, record_instances, series_key

log = logging.getLogger(__name__)

_SERIES_CACHE_ENTRIES = 10_000


@dataclass
class _Pending:
    record: InstanceRecord
    result: Future[RecordedInstance] = field(default_factory=Future)


class InstanceWriter:
    """Commits instance rows in batches on one thread; callers block until committed."""

    def __init__(self, sessions: sessionmaker[Session], max_batch: int = 64) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        # Owned by the writer thread alone: a series never changes study, and an
        # association needs linking to a study once.
        self._series_ids: dict[str, tuple[int, int]] = {}
        self._linked: set[tuple[str | None, str]] = set()
        self._thread = threading.Thread(target=self._run, name="instance-writer", daemon=True)
        self._thread.start()

    def record(self, record: InstanceRecord, timeout_s: float = 60.0) -> RecordedInstance:
        """Queue ``record`` and wait until its transaction has committed.

        Raises:
            Whatever recording it raised (e.g. IntegrityError for a duplicate
            SOP Instance UID), or TimeoutError.
        """
        pending = _Pending(record)
        self._queue.put(pending)
        return pending.result.result(timeout=timeout_s)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        records = [pending.record for pending in batch]
        try:
            with self._sessions.begin() as session:
                results = record_instances(session, records, self._series_ids, self._linked)
        except Exception as exc:  # noqa: BLE001 - one bad row must not fail the others
            if len(batch) > 1:
                log.info("batch of %d failed; writing its rows one by one", len(batch))
                for pending in batch:
                    self._write([pending])
            else:
                batch[0].result.set_exception(exc)
            return
        if len(self._series_ids) > _SERIES_CACHE_ENTRIES:
            self._series_ids.clear()
            self._linked.clear()
        for pending, recorded in zip(batch, results, strict=True):
            record = pending.record
            self._series_ids[series_key(record)] = (recorded.study_id, recorded.series_id)
            self._linked.add((record.association_id, record.study_instance_uid))
            pending.result.set_result(recorded)

