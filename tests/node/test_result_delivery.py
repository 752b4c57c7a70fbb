"""The sending step against real DCMTK peers: tracked per destination, never sent twice.

The "results" are real MR files from ../shared/data standing in for a job's SEG: delivery
sends whatever files the job's results.json (``Results``) names, so their content does not matter here
(the SEG/SR themselves go to Orthanc in tests/integration/test_end_to_end.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, update

from segnode.config.settings import Settings
from segnode.node.admin import destinations as admin_destinations
from segnode.node.admin.actors import Actor
from segnode.node.delivery.sending_step import PAUSED_RECHECK_S
from segnode.node.jobs.runner import JobRunner, job_workspace
from segnode.node.service import open_storage
from segnode.pipeline.workspace import RegionVolumes, ResultObject, Results
from segnode.storage.job_states import JobState
from segnode.storage.jobs import create_job
from segnode.storage.models import AuditEvent, Job, JobDelivery, JobEvent, Study, UserRole, utc_now
from tests.dcmtk_peers import Storescp
from tests.helpers import free_port, require_shared_data

pytestmark = pytest.mark.dcmtk


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[dict[str, Storescp]]:
    started = {
        "accepting": Storescp(tmp_path / "accepting"),
        "refusing": Storescp(tmp_path / "refusing", "--refuse"),
    }
    yield started
    for peer in started.values():
        peer.stop()


def sending_job(settings: Settings, files: list[Path]) -> tuple[JobRunner, int]:
    """A job whose results are written, in state ``sending``, and a runner (no threads)."""
    _, sessions, store = open_storage(settings)
    now = utc_now()
    with sessions.begin() as session:
        study = Study(
            study_instance_uid="1.2.3.4", state="complete", state_changed_at=now,
            first_received_at=now, last_received_at=now,
        )
        session.add(study)
        session.flush()
        job = create_job(session, study_id=study.id, trigger="test", routing_rule=None, series_ids=[], detail={})
        job.state = JobState.SENDING.value
        job_id = job.id
    job_workspace(store.data_dir, job_id).write_results(
        Results(
            objects=tuple(written_object(path) for path in files),
            volumes=RegionVolumes(voxel_volume_mm3=1.0, regions={}),
            provenance={},
        )
    )
    return JobRunner(settings, sessions, store), job_id


def written_object(path: Path) -> ResultObject:
    """A real file as the write step lists its objects (its own UIDs, listed as a SEG)."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return ResultObject(
        kind="seg",
        path=path,
        sop_class_uid=str(header.SOPClassUID),
        sop_instance_uid=str(header.SOPInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID),
    )


def test_each_destination_is_tracked_and_a_delivered_one_is_not_sent_again(
    make_settings: Callable[..., Settings], peers: dict[str, Storescp]
) -> None:
    files = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())[:5]
    settings = make_settings(
        delivery={
            "max_attempts": 2,
            "initial_backoff_s": 0.2,
            "max_backoff_s": 0.2,
            "destinations": [
                peers["accepting"].destination(name="accepting").model_dump(),
                peers["refusing"].destination(name="refusing").model_dump(),
                {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(), "timeout_s": 2},
            ],
        }
    )
    runner, job_id = sending_job(settings, files)
    sessions = runner._sessions

    runner.run_job(job_id)  # first pass: one delivered, one refused, one waiting for a retry
    with sessions() as session:
        rows = {row.destination: row for row in session.execute(select(JobDelivery)).scalars()}
        job = session.get(Job, job_id)
        assert job is not None and job.state == "sending" and job.next_attempt_at is not None
    assert rows["accepting"].state == "delivered" and len(rows["accepting"].sop_instance_uids) == 5
    assert rows["refusing"].state == "failed" and "reject" in (rows["refusing"].last_error or "").lower()
    assert rows["down"].state == "pending" and "refused" in (rows["down"].last_error or "").lower()
    assert len(peers["accepting"].received()) == 5

    time.sleep(0.3)
    runner.run_job(job_id)  # second pass: the down peer gives up; nothing is sent twice
    with sessions() as session:
        job = session.get(Job, job_id)
        rows = {row.destination: row for row in session.execute(select(JobDelivery)).scalars()}
        kinds = list(session.execute(select(JobEvent.kind).where(JobEvent.job_id == job_id)).scalars())
    assert job is not None and job.state == "failed" and job.failed_step == "sending"
    assert job.error is not None and "refusing:" in job.error and "down: gave up after 2 attempts" in job.error
    assert rows["accepting"].attempts == 1 and kinds.count("delivered") == 1
    assert kinds.count("delivery_retry") == 1 and kinds.count("delivery_failed") == 2


def test_a_paused_destination_holds_its_deliveries_until_it_is_resumed(
    make_settings: Callable[..., Settings], peers: dict[str, Storescp]
) -> None:
    files = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())[:3]
    settings = make_settings(
        delivery={"destinations": [peers["accepting"].destination(name="pacs").model_dump()]}
    )
    runner, job_id = sending_job(settings, files)
    sessions = runner._sessions
    operator = Actor("otto", UserRole.OPERATOR, "127.0.0.1")
    admin_destinations.pause(settings, sessions, operator, "pacs", "PACS upgrade tonight")

    runner.run_job(job_id)  # held: nothing sent, nothing failed, the job waits in sending
    with sessions() as session:
        job = session.get(Job, job_id)
        row = session.execute(select(JobDelivery)).scalar_one()
        assert job is not None and job.state == "sending" and job.next_attempt_at is not None
        assert 0 < (job.next_attempt_at - utc_now()).total_seconds() <= PAUSED_RECHECK_S
    assert (row.state, row.attempts) == ("pending", 0)
    assert peers["accepting"].received() == {}

    admin_destinations.resume_destination(settings, sessions, operator, "pacs")
    with sessions.begin() as session:  # the recheck is due (as it will be within 5 s)
        session.execute(update(Job).where(Job.id == job_id).values(next_attempt_at=utc_now()))
    runner.run_job(job_id)
    with sessions() as session:
        job = session.get(Job, job_id)
        audit = session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars().all()
    assert job is not None and job.state == "done" and len(peers["accepting"].received()) == 3
    assert audit == ["destination.pause", "destination.resume"]
