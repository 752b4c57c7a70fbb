"""Recording received instances, associations and quarantine in the database.

Why ``INSERT ... ON CONFLICT DO NOTHING`` for studies and series: several
associations may deliver the first instances of one study at the same moment
(and several nodes may share one PostgreSQL); the unique UID decides, nobody
fails. Counters are updated with SQL expressions for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import (
    Association,
    AssociationOutcome,
    Instance,
    NodeEvent,
    QuarantinedInstance,
    Series,
    Study,
    StudyAssociation,
    StudyState,
    utc_now,
)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """Everything recorded about one stored instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    attributes: dict[str, Any]
    size_bytes: int
    sha256: str
    file_path: str
    calling_ae: str
    called_ae: str
    association_id: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class RecordedInstance:
    study_id: int
    series_id: int
    instance_id: int
    reopened_from: str | None
    """The study's previous state when this instance reopened it, else None."""


def _insert_ignoring_conflict(session: Session, table: Table, values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(dialect)
    session.execute(statement)


def _study_id(session: Session, record: InstanceRecord) -> int:
    _insert_ignoring_conflict(
        session,
        Study.__table__,  # type: ignore[arg-type]
        {
            "study_instance_uid": record.study_instance_uid,
            "state": StudyState.RECEIVING,
            "state_reason": "first instance received",
            "state_changed_at": record.received_at,
            "first_received_at": record.received_at,
            "last_received_at": record.received_at,
            "received_instances": 0,
            "times_fired": 0,
        },
    )
    return session.execute(
        select(Study.id).where(Study.study_instance_uid == record.study_instance_uid)
    ).scalar_one()


def _series_id(session: Session, study_id: int, record: InstanceRecord) -> int:
    _insert_ignoring_conflict(
        session,
        Series.__table__,  # type: ignore[arg-type]
        {
            "study_id": study_id,
            "series_instance_uid": record.series_instance_uid,
            "modality": record.modality,
            "series_number": record.series_number,
            "series_description": record.series_description,
            "attributes": record.attributes,
            "first_received_at": record.received_at,
            "last_received_at": record.received_at,
            "instance_count": 0,
            "size_bytes": 0,
        },
    )
    return session.execute(
        select(Series.id).where(Series.series_instance_uid == record.series_instance_uid)
    ).scalar_one()


def _touch_study_and_series(
    session: Session,
    study_id: int,
    series_id: int,
    record: InstanceRecord,
    count: int,
    link_association: bool = True,
) -> str | None:
    """Advance counters and timers; reopen a study that had already been decided."""
    counters: dict[str, Any] = {
        "last_received_at": record.received_at,
        "received_instances": Study.received_instances + count,
    }
    # Common case first: the study is still receiving (one statement, no read).
    touched = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.state == StudyState.RECEIVING)
        .values(**counters)
    ).rowcount  # type: ignore[attr-defined]
    reopened_from = None
    if touched == 0:
        reopened_from = session.execute(
            select(Study.state).where(Study.id == study_id)
        ).scalar_one()
        session.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(
                **counters,
                state=StudyState.RECEIVING,
                state_reason=f"reopened: an instance arrived after the study was {reopened_from}",
                state_changed_at=record.received_at,
                deadline_passed_at=None,
            )
        )
        record_node_event(
            session,
            "study_reopened",
            {"previous_state": reopened_from, "series_instance_uid": record.series_instance_uid},
            study_id=study_id,
            association_id=record.association_id,
        )
    session.execute(
        update(Series)
        .where(Series.id == series_id)
        .values(
            last_received_at=record.received_at,
            instance_count=Series.instance_count + count,
            size_bytes=Series.size_bytes + record.size_bytes * count,
        )
    )
    if record.association_id is not None and link_association:
        _insert_ignoring_conflict(
            session,
            StudyAssociation.__table__,  # type: ignore[arg-type]
            {"study_id": study_id, "association_id": record.association_id},
        )
    return reopened_from


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.execute(
        select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
    ).scalar_one_or_none()


def stored_fingerprint(session: Session, sop_instance_uid: str) -> tuple[str, str] | None:
    """``(sha256, file_path)`` of a stored instance, or None (one indexed read)."""
    row = session.execute(
        select(Instance.sha256, Instance.file_path).where(
            Instance.sop_instance_uid == sop_instance_uid
        )
    ).first()
    return None if row is None else (row[0], row[1])


def record_instance(
    session: Session,
    record: InstanceRecord,
    known_ids: tuple[int, int] | None = None,
    link_association: bool = True,
) -> RecordedInstance:
    """Add a new instance row, creating its study and series rows on first sight.

    Args:
        known_ids: ``(study_id, series_id)`` when the caller already knows the
            series (a series never moves to another study), saving four queries.
        link_association: False when the caller knows the association is already
            linked to the study.
    """
    if known_ids is None:
        study_id = _study_id(session, record)
        series_id = _series_id(session, study_id, record)
    else:
        study_id, series_id = known_ids
    inserted = cast(
        "CursorResult[Any]",
        session.execute(
            insert(Instance).values(
                series_id=series_id,
                sop_instance_uid=record.sop_instance_uid,
                sop_class_uid=record.sop_class_uid,
                transfer_syntax_uid=record.transfer_syntax_uid,
                size_bytes=record.size_bytes,
                sha256=record.sha256,
                file_path=record.file_path,
                calling_ae=record.calling_ae,
                called_ae=record.called_ae,
                association_id=record.association_id,
                received_at=record.received_at,
            )
        ),
    )
    primary_key = inserted.inserted_primary_key
    if primary_key is None:
        raise RuntimeError("INSERT into instances returned no primary key")
    instance_id = primary_key[0]
    reopened_from = _touch_study_and_series(
        session, study_id, series_id, record, count=1, link_association=link_association
    )
    return RecordedInstance(study_id, series_id, int(instance_id), reopened_from)


def replace_instance(
    session: Session, existing: Instance, record: InstanceRecord
) -> RecordedInstance:
    """Point an existing SOP Instance UID at newer content (duplicate policy keep_newest)."""
    study_id = _study_id(session, record)
    series_id = _series_id(session, study_id, record)
    existing.series_id = series_id
    existing.sop_class_uid = record.sop_class_uid
    existing.transfer_syntax_uid = record.transfer_syntax_uid
    existing.size_bytes = record.size_bytes
    existing.sha256 = record.sha256
    existing.file_path = record.file_path
    existing.calling_ae = record.calling_ae
    existing.called_ae = record.called_ae
    existing.association_id = record.association_id
    existing.received_at = record.received_at
    session.flush()
    reopened_from = _touch_study_and_series(session, study_id, series_id, record, count=0)
    return RecordedInstance(study_id, series_id, existing.id, reopened_from)


def record_quarantine(
    session: Session,
    *,
    reason: str,
    status_code: int,
    file_path: str,
    sop_instance_uid: str | None,
    sop_class_uid: str | None,
    calling_ae: str | None,
    association_id: str | None,
) -> QuarantinedInstance:
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


def record_node_event(
    session: Session,
    kind: str,
    detail: dict[str, Any],
    *,
    study_id: int | None = None,
    association_id: str | None = None,
) -> None:
    session.add(
        NodeEvent(
            at=utc_now(), kind=kind, detail=detail, study_id=study_id, association_id=association_id
        )
    )


def open_association(
    session: Session,
    association_id: str,
    *,
    calling_ae: str,
    called_ae: str,
    peer_address: str,
    peer_port: int,
) -> None:
    session.add(
        Association(
            id=association_id,
            calling_ae=calling_ae,
            called_ae=called_ae,
            peer_address=peer_address,
            peer_port=peer_port,
            started_at=utc_now(),
            outcome=AssociationOutcome.OPEN,
            instances_stored=0,
            instances_failed=0,
        )
    )


def close_association(
    session: Session, association_id: str, outcome: AssociationOutcome, stored: int, failed: int
) -> None:
    session.execute(
        update(Association)
        .where(Association.id == association_id, Association.ended_at.is_(None))
        .values(
            ended_at=utc_now(), outcome=outcome, instances_stored=stored, instances_failed=failed
        )
    )


def interrupt_open_associations(session: Session) -> int:
    """At start-up: associations still open belonged to a previous process that died."""
    result = session.execute(
        update(Association)
        .where(Association.ended_at.is_(None))
        .values(ended_at=utc_now(), outcome=AssociationOutcome.INTERRUPTED)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
