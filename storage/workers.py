"""The ``workers`` table: each ``segnode worker`` and its heartbeat.

Why in the database and not Celery's own remote control (``inspect ping``): the dashboard
and ``/metrics`` read the database only, and a worker's heartbeat must say "alive" only if
the worker can reach the database it records steps in, which a broker ping cannot tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from segnode.storage.models import Worker

#: Heartbeats a worker may miss before it is shown as lost.
MISSED_HEARTBEATS = 3


def register_worker(
    session: Session,
    name: str,
    hostname: str,
    queues: Sequence[str],
    concurrency: int,
    now: datetime,
) -> None:
    """Create or restart the worker's row (a worker keeps its name across restarts)."""
    row = session.get(Worker, name)
    if row is None:
        row = Worker(name=name, steps_done=0, steps_failed=0)
        session.add(row)
    row.hostname = hostname
    row.queues = ",".join(queues)
    row.concurrency = concurrency
    row.started_at = now
    row.heartbeat_at = now
    row.stopped_at = None


def beat(session: Session, name: str, now: datetime) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(heartbeat_at=now))


def worker_stopped(session: Session, name: str, now: datetime) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(stopped_at=now))


def count_step(session: Session, name: str, *, failed: bool) -> None:
    column = Worker.steps_failed if failed else Worker.steps_done
    session.execute(update(Worker).where(Worker.name == name).values({column: column + 1}))


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    name: str
    hostname: str
    queues: tuple[str, ...]
    concurrency: int
    state: str
    """``alive`` (a recent heartbeat), ``lost`` (silent: killed, its machine down, or cut off
    from the database) or ``stopped`` (a clean stop)."""
    heartbeat_at: datetime
    started_at: datetime
    steps_done: int
    steps_failed: int


def worker_health(session: Session, now: datetime, heartbeat_s: float) -> list[WorkerHealth]:
    """Every worker that ever registered, alive ones first."""
    silent_after = timedelta(seconds=heartbeat_s * MISSED_HEARTBEATS)
    rows = session.execute(select(Worker).order_by(Worker.name)).scalars()
    health = [
        WorkerHealth(
            name=row.name,
            hostname=row.hostname,
            queues=tuple(queue for queue in row.queues.split(",") if queue),
            concurrency=row.concurrency,
            state=(
                "stopped"
                if row.stopped_at is not None
                else "alive"
                if now - row.heartbeat_at <= silent_after
                else "lost"
            ),
            heartbeat_at=row.heartbeat_at,
            started_at=row.started_at,
            steps_done=row.steps_done,
            steps_failed=row.steps_failed,
        )
        for row in rows
    ]
    order = {"alive": 0, "lost": 1, "stopped": 2}
    return sorted(health, key=lambda worker: (order[worker.state], worker.name))
