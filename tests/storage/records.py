"""Instance records for storage tests (no DICOM needed to exercise the database)."""

from __future__ import annotations

from datetime import UTC, datetime

from segnode.storage.ingest import InstanceRecord


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
