"""Rows for quarantined instances: what was kept aside, why, and what the sender was told.

The file itself (when there is one) is kept by ``FileStore.quarantine`` /
``quarantine_file`` with a JSON note beside it; the row makes it countable
(``segnode studies``) and ties it to the association that brought it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from segnode.storage.models import QuarantinedInstance, utc_now


def record_quarantine(
    session: Session,
    *,
    reason: str,
    status_code: int,
    file_path: str | None,
    sop_instance_uid: str | None,
    sop_class_uid: str | None,
    calling_ae: str | None,
    association_id: str | None,
) -> QuarantinedInstance:
    """Add a quarantine row; ``file_path`` is relative to the quarantine root, None without a copy."""
    row = QuarantinedInstance(
        quarantined_at=utc_now(),
        reason=reason,
        status_code=status_code,
        file_path=file_path,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        calling_ae=calling_ae,
        association_id=association_id,
    )
    session.add(row)
    return row
