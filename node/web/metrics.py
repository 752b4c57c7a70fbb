"""Prometheus metrics (``/metrics``), read from the database at each scrape.

Why a collector over the database and not counters incremented in place: the node's
counts live in its tables already (instances, quarantine, associations, jobs, their
events, deliveries), so every figure survives restarts, agrees with the dashboard, and is
the same whichever process serves the scrape. Counters are totals since the database was
created. The step histograms read every finished step's duration (two columns of
``job_events``): milliseconds for a node's first hundred thousand jobs.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from segnode.node.admin.status import disk_free_mb
from segnode.node.completion.rule import fire_kind
from segnode.node.web.context import WebContext
from segnode.storage.database import read_only_session
from segnode.storage.job_states import MACHINE, JobState
from segnode.storage.models import (
    Association,
    Instance,
    Job,
    JobDelivery,
    JobEvent,
    QuarantinedInstance,
    utc_now,
)
from segnode.storage.workers import worker_health

STEP_BUCKETS_S = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
#: The event that ends a step is the state it moved the job to: event kind -> the step's state.
_STEP_OF_EVENT = {row.next.value: row.state.value for row in MACHINE}


def refusal_reason(reason: str) -> str:
    """A quarantine reason without its particulars (UIDs, sizes), for a metric label."""
    head = reason.split(":", 1)[0].split(";", 1)[0].split("(", 1)[0].strip()
    return head[:60] or "unknown"


class DatabaseCollector(Collector):
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    def collect(self) -> Iterator[Metric]:
        with read_only_session(self._ctx.sessions) as session:
            yield from self._instances(session)
            yield from self._associations(session)
            yield from self._jobs(session)
            yield from self._steps(session)
            yield from self._deliveries(session)
            if self._ctx.settings.jobs.executor == "celery":
                yield from self._workers(session)
        disk = GaugeMetricFamily("segnode_disk_free_bytes", "Free space on the data folder's filesystem")
        disk.add_metric([], disk_free_mb(self._ctx.settings) * 2**20)
        yield disk
        floor = GaugeMetricFamily("segnode_disk_floor_bytes", "Below this the listener refuses instances")
        floor.add_metric([], self._ctx.settings.storage.min_free_disk_mb * 2**20)
        yield floor
        up = GaugeMetricFamily("segnode_listener_up", "1 while the DICOM listener is bound")
        probe = self._ctx.probe
        up.add_metric([], 1.0 if probe is not None and probe.listener_bound() else 0.0)
        yield up

    def _workers(self, session: Session) -> Iterator[Metric]:
        health = worker_health(session, utc_now(), self._ctx.settings.distributed.heartbeat_s)
        by_state = GaugeMetricFamily(
            "segnode_workers", "segnode worker processes by heartbeat state", labels=["state"]
        )
        for state in ("alive", "lost", "stopped"):
            by_state.add_metric([state], sum(1 for worker in health if worker.state == state))
        yield by_state
        steps = CounterMetricFamily(
            "segnode_worker_steps", "Steps each worker recorded", labels=["worker", "outcome"]
        )
        for worker in health:
            steps.add_metric([worker.name, "done"], worker.steps_done)
            steps.add_metric([worker.name, "failed"], worker.steps_failed)
        yield steps

    def _instances(self, session: Session) -> Iterator[Metric]:
        received = CounterMetricFamily("segnode_instances_received", "Instances stored")
        received.add_metric([], session.execute(select(func.count(Instance.id))).scalar_one())
        yield received
        refused = CounterMetricFamily(
            "segnode_instances_quarantined", "Instances refused or set aside, by reason", labels=["reason"]
        )
        counts: dict[str, int] = {}
        for reason, count in session.execute(
            select(QuarantinedInstance.reason, func.count(QuarantinedInstance.id)).group_by(
                QuarantinedInstance.reason
            )
        ).tuples():
            key = refusal_reason(reason)
            counts[key] = counts.get(key, 0) + int(count)
        for key, count in sorted(counts.items()):
            refused.add_metric([key], count)
        yield refused

    def _associations(self, session: Session) -> Iterator[Metric]:
        family = CounterMetricFamily("segnode_associations", "Associations by outcome", labels=["outcome"])
        for outcome, count in session.execute(
            select(Association.outcome, func.count(Association.id)).group_by(Association.outcome)
        ).tuples():
            family.add_metric([outcome], count)
        yield family

    def _jobs(self, session: Session) -> Iterator[Metric]:
        by_state = dict(
            session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).tuples().all()
        )
        jobs = GaugeMetricFamily("segnode_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], int(by_state.get(state, 0)))
        yield jobs
        fired = CounterMetricFamily("segnode_studies_fired", "Jobs created, by why the study fired", labels=["reason"])
        kinds: dict[str, int] = {}
        for trigger, count in session.execute(
            select(Job.trigger, func.count(Job.id)).group_by(Job.trigger)
        ).tuples():
            kinds[fire_kind(trigger)] = kinds.get(fire_kind(trigger), 0) + int(count)
        for kind, count in sorted(kinds.items()):
            fired.add_metric([kind], count)
        yield fired

    def _steps(self, session: Session) -> Iterator[Metric]:
        durations: dict[str, list[float]] = {}
        for kind, duration in session.execute(
            select(JobEvent.kind, JobEvent.duration_s).where(
                JobEvent.duration_s.is_not(None), JobEvent.kind.in_(list(_STEP_OF_EVENT))
            )
        ).tuples():
            durations.setdefault(_STEP_OF_EVENT[kind], []).append(float(duration or 0.0))
        steps = HistogramMetricFamily(
            "segnode_step_duration_seconds", "Finished steps' durations", labels=["step"]
        )
        inference = HistogramMetricFamily("segnode_inference_seconds", "The inferring step's duration")
        for step, values in sorted(durations.items()):
            buckets = _buckets(values)
            steps.add_metric([step], buckets, sum(values))
            if step == JobState.INFERRING.value:
                inference.add_metric([], buckets, sum(values))
        yield steps
        yield inference

    def _deliveries(self, session: Session) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "segnode_delivery_attempts", "Delivery attempts per destination", labels=["destination"]
        )
        failed = GaugeMetricFamily(
            "segnode_deliveries_failed", "Jobs' deliveries that failed, per destination", labels=["destination"]
        )
        delivered = CounterMetricFamily(
            "segnode_deliveries_delivered", "Jobs' results delivered, per destination", labels=["destination"]
        )
        rows = session.execute(
            select(
                JobDelivery.destination,
                func.sum(JobDelivery.attempts),
                func.count(JobDelivery.id).filter(JobDelivery.state == "failed"),
                func.count(JobDelivery.id).filter(JobDelivery.state == "delivered"),
            ).group_by(JobDelivery.destination)
        ).tuples()
        for name, tries, failures, done in rows:
            attempts.add_metric([name], int(tries or 0))
            failed.add_metric([name], int(failures or 0))
            delivered.add_metric([name], int(done or 0))
        yield attempts
        yield failed
        yield delivered


def _buckets(values: list[float]) -> list[tuple[str, float]]:
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in STEP_BUCKETS_S]
    return [*buckets, ("+Inf", float(len(values)))]


def metrics_registry(ctx: WebContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(ctx))
    return registry
