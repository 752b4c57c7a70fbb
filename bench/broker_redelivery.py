"""How soon a killed worker's unacknowledged step message reaches another worker, per broker.

Why it matters: a step message is acknowledged late (after the step is recorded), so when
a worker dies mid-step the broker must hand the message to another. RabbitMQ does so when
the dead consumer's connection closes; Celery's Redis transport has no consumer
connection to watch and restores an unacknowledged message only after its
``visibility_timeout``, which must exceed the longest step (or a live worker's long
inference is handed out twice). Measured here with kombu, the library Celery uses:
a consumer process takes one message without acknowledging it and is killed -9; a second
consumer waits for the message. RabbitMQ: the test suite's private broker
(tests/broker.py); Redis: the one on 127.0.0.1:6379 when present, with a 10 s visibility
timeout (the shipped default is 3600 s).

Run: .venv/bin/python bench/broker_redelivery.py
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from kombu import Connection, Exchange, Queue

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUEUE = Queue("bench.redelivery", Exchange("bench.redelivery", type="direct"), routing_key="bench.redelivery")


def _take_and_hang(url: str, options: dict[str, object], got: multiprocessing.synchronize.Event) -> None:
    with Connection(url, transport_options=options) as connection:
        with connection.SimpleQueue(QUEUE) as queue:
            queue.get(timeout=30)  # taken, never acknowledged
            got.set()
            time.sleep(3600)


def measure(url: str, options: dict[str, object]) -> float:
    with Connection(url, transport_options=options) as connection:
        with connection.SimpleQueue(QUEUE) as queue:
            queue.clear()
            queue.put({"job_id": 1, "state": "inferring"})
    context = multiprocessing.get_context("spawn")
    got = context.Event()
    first = context.Process(target=_take_and_hang, args=(url, options, got))
    first.start()
    if not got.wait(30):
        raise RuntimeError("the first consumer got nothing")
    os.kill(first.pid or 0, signal.SIGKILL)
    killed = time.perf_counter()
    first.join()
    with Connection(url, transport_options=options) as connection:
        with connection.SimpleQueue(QUEUE) as queue:
            deadline = killed + 120
            while time.perf_counter() < deadline:
                try:
                    message = queue.get(timeout=1)
                except queue.Empty:
                    continue
                message.ack()
                return time.perf_counter() - killed
    raise RuntimeError("not redelivered within 120 s")


def main() -> None:
    from tests.broker import Broker

    print(f"# broker redelivery after a consumer is killed -9, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    broker = Broker().start()
    try:
        seconds = [measure(broker.url, {}) for _ in range(3)]
        print(f"RabbitMQ (acks_late, connection closed):  {', '.join(f'{s:.2f}' for s in seconds)} s")
    finally:
        broker.remove()
    try:
        options = {"visibility_timeout": 10}
        seconds = [measure("redis://127.0.0.1:6379/15", options) for _ in range(2)]
        print(f"Redis (visibility_timeout 10 s):          {', '.join(f'{s:.2f}' for s in seconds)} s")
    except Exception as exc:  # no Redis here
        print(f"Redis: not measured ({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    main()
