"""The ``[distributed]`` section: job steps on Celery workers, when one machine is not enough.

Why a section of its own: it names another system (the message broker) with its own
address and failure modes, and it is read by two programs, ``segnode serve`` (which
dispatches steps) and ``segnode worker`` (which runs them). It is read only when
``[jobs] executor = "celery"``; the embedded default (``"local"``) ignores it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from segnode.config.fields import PositiveSeconds, Section

QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class DistributedSettings(Section):
    """Where step messages go and how a lost worker's step is taken over."""

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    """The RabbitMQ broker (AMQP 0-9-1). The node publishes one message per step; workers
    consume them with late acknowledgement, so a worker that dies mid-step has its message
    redelivered to another at once."""
    cpu_queue: QueueName = "segnode.cpu"
    """Selection, conversion, preprocessing and writing: any worker started with ``cpu``."""
    gpu_queue: QueueName = "segnode.gpu"
    """Inference only: the workers started with ``gpu`` (the machines with the device)."""
    lease_s: Annotated[float, Field(ge=2)] = 60.0
    """A worker running a step holds the job's row for this long and renews it every third
    of it; a lease that runs out (the worker's machine died or lost the database) lets
    another worker take the step over."""
    redispatch_s: Annotated[float, Field(ge=1)] = 300.0
    """A step whose message was published but that nobody has claimed after this long
    (a lost message, a broker that restarted without it) is published again."""
    retry_publish_s: PositiveSeconds = 5.0
    """How long the node waits before publishing again after the broker refused a message."""
    heartbeat_s: PositiveSeconds = 10.0
    """How often a worker writes its heartbeat row (``workers`` table; dashboard, metrics);
    a worker silent for three heartbeats is shown as lost."""
    shared_dir_timeout_s: PositiveSeconds = 10.0
    """How long a worker waits for the job folder to appear on the shared filesystem before
    it fails that attempt transiently (NFS attribute caches lag behind the node's writes)."""
