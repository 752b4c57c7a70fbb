"""The node's own event log: what it decided outside a job (rejections, quarantine, completion, disk).

A job's decisions go to its own log (``segnode.storage.jobs.append_job_event``); these are
the rest, each tied to a study or an association where there is one. Details hold reasons,
counts and UIDs, never a patient attribute.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from segnode.storage.models import NodeEvent, utc_now


def record_node_event(
    session: Session,
    kind: str,
    detail: dict[str, Any],
    *,
    study_id: int | None = None,
    association_id: str | None = None,
) -> None:
    """Append one event of ``kind`` (committed with the caller's transaction)."""
    session.add(
        NodeEvent(
            at=utc_now(), kind=kind, detail=detail, study_id=study_id, association_id=association_id
        )
    )
