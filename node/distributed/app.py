"""The Celery application the node (publishing) and the workers (consuming) share.

Why these settings: a step message is acknowledged late (``task_acks_late``), after the
step's result is recorded, and rejected back to the queue when its worker process dies
(``task_reject_on_worker_lost``), so RabbitMQ hands a killed worker's step to another at
once; each worker process takes one message at a time (``worker_prefetch_multiplier =
1``), so a long inference never holds a second step hostage; there is no result backend
(results are job rows); messages are JSON (no pickle from the network); publishing waits
for the broker's confirm, so a step the node recorded as published reached the broker.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from segnode.config.settings import Settings
from segnode.storage.job_states import JobState

#: The one task: "run step S of job J" (``segnode.node.distributed.task``).
STEP_TASK = "segnode.run_step"


def queue_for(settings: Settings, state: JobState) -> str:
    """Inference goes to the GPU queue; every other pipeline step to the CPU queue."""
    distributed = settings.distributed
    return distributed.gpu_queue if state is JobState.INFERRING else distributed.cpu_queue


def step_queues(settings: Settings) -> list[Queue]:
    names = (settings.distributed.cpu_queue, settings.distributed.gpu_queue)
    # kombu leaves Queue and Exchange unannotated.
    return [
        Queue(name, Exchange(name, type="direct", durable=True), routing_key=name)  # type: ignore[no-untyped-call]
        for name in names
    ]


def make_celery_app(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (not the process-wide default app)."""
    timeout_s = settings.jobs.step_timeout_s
    app = Celery("segnode", broker=settings.distributed.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_queues=step_queues(settings),
        task_default_queue=settings.distributed.cpu_queue,
        task_create_missing_queues=False,
        # A step past jobs.step_timeout_s gets SoftTimeLimitExceeded (recorded as a
        # transient failure); 30 s later its process is killed.
        task_soft_time_limit=timeout_s,
        task_time_limit=timeout_s + 30,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=4.0,
        broker_heartbeat=30,
        broker_transport_options={"confirm_publish": True},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
    )
    return app
