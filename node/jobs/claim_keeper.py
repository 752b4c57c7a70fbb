"""Keeps a step's claim on its job alive while the step runs (distributed executor).

A claim (``segnode.storage.step_claims``) is a lease: it holds for ``lease_s`` seconds
unless renewed. A thread renews it every third of that, so a live owner never loses its
job to a slow step, and a dead one (killed, its machine off, cut off from the database)
loses it within ``lease_s``. Why a thread and not renewal between stages of the step: a
step is one call into the pipeline (minutes of inference), with no point to renew in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from segnode.storage.models import utc_now
from segnode.storage.step_claims import renew_claim

log = logging.getLogger(__name__)


class ClaimKeeper:
    """Renews ``owner``'s lease on ``job_id``; :attr:`lost` once a renewal found it gone."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: int, owner: str, lease_s: float
    ) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._owner = owner
        self._lease_s = lease_s
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"claim-keeper-{job_id}", daemon=True
        )

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                with self._sessions.begin() as session:
                    held = renew_claim(session, self._job_id, self._owner, self._lease_s, utc_now())
            except Exception as exc:  # the database is away: try again, the lease may hold
                log.warning(
                    "could not renew the step's lease",
                    extra={"job_id": self._job_id, "error": f"{type(exc).__name__}: {exc}"},
                )
                continue
            if not held:
                log.warning(
                    "the step's claim was lost (job moved or taken over); its result will be "
                    "discarded",
                    extra={"job_id": self._job_id, "owner": self._owner},
                )
                self.lost.set()
                return

    @contextmanager
    def running(self) -> Iterator[ClaimKeeper]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)
