"""Instance records and jobs in a given state for storage tests (no DICOM, no pipeline)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from segnode.storage.instances import InstanceRecord
from segnode.storage.job_states import MACHINE, JobState
from segnode.storage.jobs import advance_job, cancel_job, conclude_not_applicable, fail_job


def instance_record(sop: str, series: str = "1.2.3.1", study: str = "1.2.3", when: datetime | None = None) -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="MR",
        series_number=3,
        series_description="t1_mprage",
        attributes={"Modality": "MR", "ImageType": ["ORIGINAL", "PRIMARY"]},
        size_bytes=1000,
        sha256="0" * 64,
        file_path=f"{study}/{series}/{sop}.dcm",
        calling_ae="PACS",
        called_ae="SEGNODE",
        association_id=None,
        received_at=when or datetime.now(UTC),
    )


def put_job_in(session: Session, job_id: int, state: JobState) -> None:
    """Drive a ``received`` job to ``state`` the way the runner and the operator would."""
    for row in MACHINE:
        if row.state is state:
            return
        if (
            state in (JobState.FAILED, JobState.NOT_APPLICABLE, JobState.CANCELLED)
            and row.state is JobState.SELECTING
        ):
            break  # fail or cancel it half way along the path
        assert advance_job(session, job_id, row.state, row.next, {}, None)
    if state is JobState.FAILED:
        assert fail_job(session, job_id, JobState.SELECTING, "selecting: test failure", None)
    elif state is JobState.NOT_APPLICABLE:
        assert conclude_not_applicable(
            session, job_id, JobState.SELECTING, "not applicable: missing FLAIR", {"missing": ["flair"]}, None
        )
    elif state is JobState.CANCELLED:
        cancel_job(session, job_id, "test")
