"""Several listener processes on one port (``listener.processes``, ``SO_REUSEPORT``).

Eight DCMTK ``storescu`` associations at once deliver one study (each series in two
halves); the kernel spreads them over the node's three listener processes. Every instance
must be stored once, the rows must show more than one process took associations, and
completion (in the main process, reading the rows) must decide the study once: one job.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select

from segnode.storage.models import Association, Instance, Job, Study
from tests.conftest import FAST_COMPLETION
from tests.fixtures.dicom_study import BuiltSeries
from tests.helpers import storescu, wait_for


def test_three_listener_processes_share_the_port_and_the_study_is_decided_once(
    start, tcga_study: dict[str, BuiltSeries]
) -> None:
    node = start(completion=FAST_COMPLETION, listener={"processes": 3})
    batches: list[list[Path]] = []
    for series in tcga_study.values():
        half = len(series.files) // 2
        batches += [series.files[:half], series.files[half:]]
    total = sum(len(batch) for batch in batches)

    with ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(lambda batch: storescu(node.scp.port, batch), batches))
    assert all(result.returncode == 0 for result in results), [r.stderr[-500:] for r in results]

    with node.sessions() as session:
        stored = session.execute(select(func.count(Instance.id))).scalar_one()
        listeners = set(session.execute(select(Association.listener)).scalars())
    assert stored == total
    assert len(listeners) >= 2, listeners  # more than one process took associations
    assert all(name and name.startswith(socket.gethostname() + ":") for name in listeners)

    def decided() -> Study | None:
        with node.sessions() as session:
            study = session.execute(select(Study)).scalar_one()
            return study if study.state == "complete" else None

    study = wait_for(decided, 60, "the study to complete")
    assert study.received_instances == total
    with node.sessions() as session:
        assert session.execute(select(func.count(Job.id))).scalar_one() == 1

    node.stop()  # the extra processes stop with it: nothing listens on the port any more
    with socket.socket() as probe:
        # SO_REUSEADDR, as a restarted node binds: only a listening socket would refuse it
        # (the closed associations' TIME_WAIT sockets do not).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", node.settings.listener.port))
