"""Publishes each due pipeline step to the workers' queues (runs in ``segnode serve``).

The job rows say which steps are due (``segnode.storage.step_claims.dispatchable_orders``);
for each, :func:`~segnode.storage.step_claims.mark_dispatched` is committed *before* the
message is published, so a node killed between the two publishes the step again after
``distributed.redispatch_s`` rather than never, and two nodes sharing the database never
both publish it in one period. A broker that refuses (down, restarting) costs a log line
and a retry after ``distributed.retry_publish_s``: the job waits, nothing is lost.

Why a fresh broker connection per round: a pooled connection that died with the broker
raises on its first use after the broker is back; a new one either works or fails at once
with the broker's own error, which is what the log line should say.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.distributed.app import STEP_TASK, make_celery_app, queue_for, step_queues
from segnode.storage.job_states import STEP_FOR_STATE, JobState
from segnode.storage.models import utc_now
from segnode.storage.step_claims import (
    StepOrder,
    dispatchable_orders,
    mark_dispatched,
    reschedule_dispatch,
)

log = logging.getLogger(__name__)

#: The states whose step the workers run (the pipeline's).
WORKER_STATES: tuple[JobState, ...] = tuple(STEP_FOR_STATE)


class StepDispatcher:
    """A thread that publishes due steps every ``jobs.poll_interval_s`` (or on :meth:`wake`)."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], app: Celery | None = None
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._app = app or make_celery_app(settings)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="step-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch_due()
            except Exception:  # the database is away: the next round tries again
                log.exception("step dispatcher error")
            self._wake.wait(self._settings.jobs.poll_interval_s)
            self._wake.clear()

    def dispatch_due(self) -> int:
        """Publish every due step; returns how many were published."""
        now = utc_now()
        with self._sessions() as session:
            orders = dispatchable_orders(session, now, WORKER_STATES)
        if not orders:
            return 0
        published = 0
        distributed = self._settings.distributed
        try:
            with self._app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1)
                channel = connection.default_channel
                for queue in step_queues(self._settings):
                    queue(channel).declare()  # type: ignore[no-untyped-call]
                for order in orders:
                    with self._sessions.begin() as session:
                        if not mark_dispatched(session, order, now, distributed.redispatch_s):
                            continue  # claimed meanwhile, or published by another node
                    try:
                        self._publish(order, connection)
                    except Exception:
                        with self._sessions.begin() as session:
                            reschedule_dispatch(
                                session, order, now + timedelta(seconds=distributed.retry_publish_s)
                            )
                        raise
                    published += 1
        except Exception as exc:
            log.warning(
                "broker refused the step; publishing again later",
                extra={
                    "error": f"{type(exc).__name__}: {exc}",
                    "retry_s": distributed.retry_publish_s,
                },
            )
        return published

    def _publish(self, order: StepOrder, connection: object) -> None:
        queue = queue_for(self._settings, order.state)
        self._app.send_task(
            STEP_TASK,
            args=[order.as_message()],
            queue=queue,
            routing_key=queue,
            exchange=queue,
            connection=connection,
            retry=False,
        )
        log.info(
            "step published",
            extra={"job_id": order.job_id, "step": order.state.value, "queue": queue},
        )
