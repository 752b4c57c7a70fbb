"""The node at a glance (the dashboard's front page, ``/api/status``) and readiness (``/ready``).

Why a probe: the database says what arrived and what runs, but whether the listener is
bound and the workers are warm lives in the node's process; the node hands the web
application a :class:`NodeProbe` of two callables. The page holds no state of its own:
each request asks the database and the probe afresh.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.jobs.worker_pool import PoolStatus
from segnode.pipeline.model.catalog import node_catalog
from segnode.pipeline.model.errors import ModelError
from segnode.storage.database import read_only_session
from segnode.storage.job_states import ACTIVE
from segnode.storage.models import Job, QuarantinedInstance, Study, StudyState, utc_now
from segnode.storage.workers import WorkerHealth, worker_health


@dataclass(frozen=True)
class NodeProbe:
    """What only the running node knows: is the listener bound, how are the workers."""

    listener_bound: Callable[[], bool]
    workers: Callable[[], PoolStatus]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class NodeStatus:
    ae_titles: list[str]
    listener: str
    listener_bound: bool
    disk_free_mb: float
    disk_floor_mb: int
    studies_receiving: int
    jobs_by_state: dict[str, int]
    jobs_queued: int
    quarantined: int
    workers: dict[str, Any]
    """The local worker pool (embedded executor); ``workers: 0`` with the distributed one."""
    executor: str
    remote_workers: list[WorkerHealth]
    """``segnode worker`` processes and their heartbeat state (distributed executor)."""
    jobs_enabled: bool
    model: str
    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ready": self.ready}


def disk_free_mb(settings: Settings) -> float:
    return shutil.disk_usage(settings.storage.data_dir).free / 2**20


def readiness(settings: Settings, sessions: sessionmaker[Session], probe: NodeProbe | None) -> list[Check]:
    """``/ready``'s checks: the database answers, the listener is bound, disk above the floor,
    the configured model's weights match their checksum."""
    checks: list[Check] = []
    try:
        with read_only_session(sessions) as session:
            session.execute(text("SELECT 1"))
        checks.append(Check("database", True, "reachable"))
    except SQLAlchemyError as exc:
        checks.append(Check("database", False, f"{type(exc).__name__}: {exc}"[:300]))
    bound = probe.listener_bound() if probe is not None else False
    where = f"{settings.listener.host}:{settings.listener.port}"
    checks.append(Check("listener", bound, f"bound on {where}" if bound else f"not bound ({where})"))
    free = disk_free_mb(settings)
    floor = settings.storage.min_free_disk_mb
    checks.append(Check("disk", free > floor, f"{free:,.0f} MB free, floor {floor:,} MB"))
    checks.append(model_check(settings))
    return checks


def remote_workers(settings: Settings, sessions: sessionmaker[Session]) -> list[WorkerHealth]:
    with read_only_session(sessions) as session:
        return worker_health(session, utc_now(), settings.distributed.heartbeat_s)


def workers_check(workers: list[WorkerHealth]) -> Check:
    """Distributed executor: some alive worker serves each resource (cpu and gpu), else a
    step of that kind would wait in the broker for nobody."""
    alive = [worker for worker in workers if worker.state == "alive"]
    served = {queue for worker in alive for queue in worker.queues}
    missing = [resource for resource in ("cpu", "gpu") if resource not in served]
    if missing:
        return Check(
            "workers", False, f"no alive worker serves {' or '.join(missing)} ({len(alive)} alive)"
        )
    return Check("workers", True, f"{len(alive)} alive: " + ", ".join(w.name for w in alive))


def model_check(settings: Settings) -> Check:
    """Every configured model (the default and the ensemble's) matches its checksum.

    Hashing reads the weights (a few MB for the default model, milliseconds); a site with
    a large model sees the cost on each ``/ready``, which is why it stays a checksum and
    never a load."""
    catalog = node_catalog(settings.storage.data_dir)
    verified = []
    try:
        for model_id in [settings.model.default, *settings.model.ensemble]:
            verified.append(f"{model_id} sha256 {catalog.verify(model_id)[:12]}…")
    except (ModelError, OSError) as exc:
        return Check("model", False, str(exc)[:300])
    return Check("model", True, "; ".join(verified) + " verified")


def node_status(settings: Settings, sessions: sessionmaker[Session], probe: NodeProbe | None) -> NodeStatus:
    with read_only_session(sessions) as session:
        by_state = dict(
            session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).tuples().all()
        )
        receiving = session.execute(
            select(func.count(Study.id)).where(Study.state == StudyState.RECEIVING)
        ).scalar_one()
        quarantined = session.execute(select(func.count(QuarantinedInstance.id))).scalar_one()
    pool = probe.workers() if probe is not None else None
    distributed = settings.jobs.executor == "celery"
    workers = remote_workers(settings, sessions) if distributed else []
    listener = settings.listener
    return NodeStatus(
        ae_titles=sorted(listener.called_ae_titles),
        listener=f"{listener.host}:{listener.port}" + (" (TLS)" if listener.tls.enabled else ""),
        listener_bound=probe.listener_bound() if probe is not None else False,
        disk_free_mb=round(disk_free_mb(settings), 1),
        disk_floor_mb=settings.storage.min_free_disk_mb,
        studies_receiving=int(receiving),
        jobs_by_state={str(state): int(count) for state, count in by_state.items()},
        jobs_queued=sum(int(count) for state, count in by_state.items() if state in ACTIVE),
        quarantined=int(quarantined),
        workers=asdict(pool) if pool is not None else {"workers": 0, "warm_state": "unknown", "replacements": 0},
        executor=settings.jobs.executor,
        remote_workers=workers,
        jobs_enabled=settings.jobs.enabled,
        model=", ".join([settings.model.default, *settings.model.ensemble]),
        backend=str(settings.model.backend),
        # Worker health is shown with the checks but is not part of /ready: a node whose GPU
        # worker is away still takes studies (their jobs wait), and a load balancer must not
        # turn senders away for it.
        checks=readiness(settings, sessions, probe)
        + ([workers_check(workers)] if distributed else []),
    )

