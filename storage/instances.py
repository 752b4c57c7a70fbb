"""Recording received instances: their rows, and the study and series rows they create.

Why ``INSERT ... ON CONFLICT DO NOTHING`` for studies and series: several
associations may deliver the first instances of one study at the same moment
(and several nodes may share one PostgreSQL); the unique UID decides, nobody
fails. Counters are updated with SQL expressions for the same reason.

The receiver's group commit (``segnode.storage.instance_writer``) batches these calls.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from segnode.storage.database import rowcount
from segnode.storage.errors import IdentityConflictError
from segnode.storage.events import record_node_event
from segnode.storage.models import (
    Instance,
    Series,
    Study,
    StudyAssociation,
    StudyState,
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
    patient_key: str | None = None
    """Hash of the patient's identity; None where unknown (then not compared)."""


@dataclass(frozen=True, slots=True)
class RecordedInstance:
    study_id: int
    series_id: int
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
        _table(Study),
        {
            "study_instance_uid": record.study_instance_uid,
            "state": StudyState.RECEIVING,
            "state_reason": "first instance received",
            "state_changed_at": record.received_at,
            "first_received_at": record.received_at,
            "last_received_at": record.received_at,
            "received_instances": 0,
            "times_fired": 0,
            "patient_key": record.patient_key,
        },
    )
    study_id, known_patient = session.execute(
        select(Study.id, Study.patient_key).where(
            Study.study_instance_uid == record.study_instance_uid
        )
    ).one()
    if known_patient is not None and record.patient_key not in (None, known_patient):
        raise IdentityConflictError(STUDY_OF_ANOTHER_PATIENT)
    return int(study_id)


def _series_id(session: Session, study_id: int, record: InstanceRecord) -> int:
    _insert_ignoring_conflict(
        session,
        _table(Series),
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
    series_id, owner = session.execute(
        select(Series.id, Series.study_id).where(
            Series.series_instance_uid == record.series_instance_uid
        )
    ).one()
    if owner != study_id:
        raise IdentityConflictError(SERIES_OF_ANOTHER_STUDY)
    return int(series_id)


STUDY_OF_ANOTHER_PATIENT = "Study Instance UID already recorded for another patient"
SERIES_OF_ANOTHER_STUDY = "Series Instance UID already recorded under another study"


def identity_conflict(
    session: Session, study_instance_uid: str, series_instance_uid: str, patient_key: str | None
) -> str | None:
    """Why an instance would mix two patients or two studies, or None (two indexed reads).

    Checked before the file is written; :func:`record_instances` checks again
    inside its transaction, for two senders racing.
    """
    known_patient = session.execute(
        select(Study.patient_key).where(Study.study_instance_uid == study_instance_uid)
    ).first()
    if (
        known_patient is not None
        and known_patient[0] is not None
        and patient_key not in (None, known_patient[0])
    ):
        return STUDY_OF_ANOTHER_PATIENT
    owner = session.execute(
        select(Study.study_instance_uid)
        .join(Series, Series.study_id == Study.id)
        .where(Series.series_instance_uid == series_instance_uid)
    ).first()
    if owner is not None and owner[0] != study_instance_uid:
        return SERIES_OF_ANOTHER_STUDY
    return None


def _touch_study(
    session: Session, study_id: int, count: int, last_at: datetime, first: InstanceRecord
) -> str | None:
    """Advance the study's counters; reopen it if it had already been decided."""
    studies = _table(Study)
    counters: dict[str, Any] = {
        "last_received_at": last_at,
        "received_instances": studies.c.received_instances + count,
    }
    # Common case first: the study is still receiving (one statement, no read).
    touched = rowcount(
        session.execute(
            update(studies)
            .where(studies.c.id == study_id, studies.c.state == StudyState.RECEIVING.value)
            .values(**counters)
        )
    )
    if touched:
        return None
    reopened_from = str(
        session.execute(select(studies.c.state).where(studies.c.id == study_id)).scalar_one()
    )
    session.execute(
        update(studies)
        .where(studies.c.id == study_id)
        .values(
            **counters,
            state=StudyState.RECEIVING.value,
            state_reason=f"reopened: an instance arrived after the study was {reopened_from}",
            state_changed_at=first.received_at,
            deadline_passed_at=None,
        )
    )
    record_node_event(
        session,
        "study_reopened",
        {"previous_state": reopened_from, "series_instance_uid": first.series_instance_uid},
        study_id=study_id,
        association_id=first.association_id,
    )
    return reopened_from


def _touch_series(
    session: Session, series_id: int, count: int, size: int, last_at: datetime
) -> None:
    series = _table(Series)
    session.execute(
        update(series)
        .where(series.c.id == series_id)
        .values(
            last_received_at=last_at,
            instance_count=series.c.instance_count + count,
            size_bytes=series.c.size_bytes + size,
        )
    )


def _table(model: type[Any]) -> Table:
    """The Core table of a mapped class (``__table__`` is typed as a plain FromClause)."""
    return cast(Table, model.__table__)


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


def series_key(record: InstanceRecord) -> str:
    """The identity a series is cached under: its UID, its study's and the patient's."""
    return f"{record.series_instance_uid}|{record.study_instance_uid}|{record.patient_key}"


def record_instances(
    session: Session,
    records: Sequence[InstanceRecord],
    known_ids: Mapping[str, tuple[int, int]] | None = None,
    linked: Set[tuple[str | None, str]] = frozenset(),
) -> list[RecordedInstance]:
    """Add new instance rows in one go, creating study and series rows on first sight.

    Core statements and one multi-row INSERT: the ORM's per-object machinery
    cost more CPU than the C-STORE itself.

    Args:
        known_ids: ``series_key(record) -> (study_id, series_id)`` the caller
            already knows (a series never moves to another study; the key holds
            the study and patient too, so a record naming another one is checked).
        linked: ``(association_id, study_instance_uid)`` pairs already linked.

    Raises:
        IdentityConflictError: a record's series or study belongs to another
            study or patient; nothing of the batch is written.
    """
    ids: dict[str, tuple[int, int]] = dict(known_ids or {})
    for record in records:
        if series_key(record) not in ids:
            study_id = _study_id(session, record)
            ids[series_key(record)] = (study_id, _series_id(session, study_id, record))

    session.execute(
        insert(_table(Instance)),
        [
            {
                "series_id": ids[series_key(record)][1],
                "sop_instance_uid": record.sop_instance_uid,
                "sop_class_uid": record.sop_class_uid,
                "transfer_syntax_uid": record.transfer_syntax_uid,
                "size_bytes": record.size_bytes,
                "sha256": record.sha256,
                "file_path": record.file_path,
                "calling_ae": record.calling_ae,
                "called_ae": record.called_ae,
                "association_id": record.association_id,
                "received_at": record.received_at,
            }
            for record in records
        ],
    )

    by_series: dict[int, list[InstanceRecord]] = defaultdict(list)
    by_study: dict[int, list[InstanceRecord]] = defaultdict(list)
    for record in records:
        study_id, series_id = ids[series_key(record)]
        by_series[series_id].append(record)
        by_study[study_id].append(record)
    for series_id, group in by_series.items():
        _touch_series(
            session,
            series_id,
            len(group),
            sum(r.size_bytes for r in group),
            max(r.received_at for r in group),
        )
    reopened: dict[int, str | None] = {
        study_id: _touch_study(
            session, study_id, len(group), max(r.received_at for r in group), group[0]
        )
        for study_id, group in by_study.items()
    }
    new_links = {
        (ids[series_key(r)][0], r.association_id)
        for r in records
        if r.association_id is not None and (r.association_id, r.study_instance_uid) not in linked
    }
    for study_id, association_id in sorted(new_links, key=str):
        _insert_ignoring_conflict(
            session,
            _table(StudyAssociation),
            {"study_id": study_id, "association_id": association_id},
        )
    return [
        RecordedInstance(*ids[series_key(r)], reopened[ids[series_key(r)][0]])
        for r in records
    ]


def record_instance(session: Session, record: InstanceRecord) -> RecordedInstance:
    """Add one new instance row (see :func:`record_instances`)."""
    return record_instances(session, [record])[0]


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
    _touch_series(session, series_id, 0, 0, record.received_at)
    reopened_from = _touch_study(session, study_id, 0, record.received_at, record)
    if record.association_id is not None:
        _insert_ignoring_conflict(
            session,
            _table(StudyAssociation),
            {"study_id": study_id, "association_id": record.association_id},
        )
    return RecordedInstance(study_id, series_id, reopened_from)
