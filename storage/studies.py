"""A receiving study as the completion monitor sees it, and the transitions out of ``receiving``.

Why here and not in the monitor: every state change of a study (and of a job,
``segnode.storage.jobs``) is storage's, so a reader finds the SQL in one layer and the
decision (``segnode.node.completion.rule``) stays a pure function of what this reads.

Firing is optimistic: the UPDATE holds ``WHERE state = 'receiving' AND last_received_at =
<what the snapshot saw>``, so an instance that arrives while the monitor decides wins (the
study keeps receiving), and two monitors sharing one PostgreSQL cannot both fire it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from segnode.storage.database import rowcount
from segnode.storage.events import record_node_event
from segnode.storage.models import (
    Association,
    Instance,
    Series,
    Study,
    StudyAssociation,
    StudyState,
    UtcDateTime,
)


@dataclass(frozen=True, slots=True)
class ReceivedSeries:
    """One series of a receiving study: its captured header attributes and who sent it."""

    series_id: int
    series_instance_uid: str
    attributes: dict[str, Any]
    """Header attributes captured from the first instance (routing, completion roles, selection)."""
    instance_count: int
    last_received_at: datetime
    called_ae_titles: frozenset[str]
    calling_ae_titles: frozenset[str]


@dataclass(frozen=True, slots=True)
class ReceivingStudy:
    """What the completion rule and the routing rules need of one study, read in one transaction."""

    study_id: int
    receiving_since: datetime
    last_received_at: datetime
    """The value a fire is conditional on (see the module docstring)."""
    deadline_passed_at: datetime | None
    force_complete_by: str | None
    """Set when an operator asked for the study to fire now (``request_force_complete``)."""
    series: tuple[ReceivedSeries, ...]
    """In the order they were first received."""
    open_associations: int
    last_association_closed_at: datetime | None


def receiving_study_ids(session: Session) -> list[int]:
    """Every study still receiving, oldest first."""
    return list(
        session.execute(
            select(Study.id).where(Study.state == StudyState.RECEIVING).order_by(Study.id)
        ).scalars()
    )


def receiving_study(session: Session, study_id: int) -> ReceivingStudy | None:
    """The study's :class:`ReceivingStudy`; None if it is gone or no longer receiving."""
    study = session.execute(
        select(
            Study.state_changed_at,
            Study.last_received_at,
            Study.deadline_passed_at,
            Study.force_complete_by,
        ).where(Study.id == study_id, Study.state == StudyState.RECEIVING)
    ).one_or_none()
    if study is None:
        return None
    open_count, last_closed = session.execute(
        select(
            func.count(Association.id).filter(Association.ended_at.is_(None)),
            func.max(Association.ended_at, type_=UtcDateTime()),
        )
        .join(StudyAssociation, StudyAssociation.association_id == Association.id)
        .where(StudyAssociation.study_id == study_id)
    ).one()
    return ReceivingStudy(
        study_id=study_id,
        receiving_since=study.state_changed_at,
        last_received_at=study.last_received_at,
        deadline_passed_at=study.deadline_passed_at,
        force_complete_by=study.force_complete_by,
        series=_received_series(session, study_id),
        open_associations=int(open_count or 0),
        last_association_closed_at=last_closed,
    )


def _received_series(session: Session, study_id: int) -> tuple[ReceivedSeries, ...]:
    called: dict[int, set[str]] = defaultdict(set)
    calling: dict[int, set[str]] = defaultdict(set)
    senders = session.execute(
        select(Instance.series_id, Instance.called_ae, Instance.calling_ae)
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == study_id)
        .distinct()
    )
    for series_id, called_ae, calling_ae in senders:
        called[series_id].add(called_ae)
        calling[series_id].add(calling_ae)
    rows = session.execute(
        select(
            Series.id,
            Series.series_instance_uid,
            Series.attributes,
            Series.instance_count,
            Series.last_received_at,
        )
        .where(Series.study_id == study_id)
        .order_by(Series.id)
    )
    return tuple(
        ReceivedSeries(
            series_id=row.id,
            series_instance_uid=row.series_instance_uid,
            attributes=row.attributes,
            instance_count=row.instance_count,
            last_received_at=row.last_received_at,
            called_ae_titles=frozenset(called[row.id]),
            calling_ae_titles=frozenset(calling[row.id]),
        )
        for row in rows
    )


def record_deadline_passed(session: Session, study_id: int, at: datetime, reason: str) -> bool:
    """Note, once, that the study's deadline passed while it still waits; True the first time."""
    noted = rowcount(
        session.execute(
            update(Study)
            .where(Study.id == study_id, Study.deadline_passed_at.is_(None))
            .values(deadline_passed_at=at)
            .execution_options(synchronize_session=False)
        )
    )
    if noted:
        record_node_event(session, "deadline_passed", {"reason": reason}, study_id=study_id)
    return bool(noted)


def request_force_complete(session: Session, study_id: int, by: str) -> bool:
    """Ask the completion monitor to fire a receiving study now; False if it is not receiving.

    Only a request: the monitor still routes the study and concludes it with its usual
    conditional update, so an instance arriving meanwhile is never lost (it is in the study
    when it fires, or it reopens it by the late-series policy).
    """
    asked = rowcount(
        session.execute(
            update(Study)
            .where(Study.id == study_id, Study.state == StudyState.RECEIVING)
            .values(force_complete_by=by)
            .execution_options(synchronize_session=False)
        )
    )
    if asked:
        record_node_event(session, "force_complete_requested", {"by": by}, study_id=study_id)
    return bool(asked)


def conclude_study(
    session: Session,
    study: ReceivingStudy,
    new_state: StudyState,
    *,
    reason: str,
    rule: str | None,
    at: datetime,
) -> bool:
    """Move a receiving study to ``new_state`` (complete, ignored, discarded); False if it changed.

    Conditional on the snapshot: False when an instance arrived after ``study`` was read, or
    another node decided first. Firing (``complete``) counts in ``times_fired``.
    """
    return (
        rowcount(
            session.execute(
                update(Study)
                .where(
                    Study.id == study.study_id,
                    Study.state == StudyState.RECEIVING,
                    Study.last_received_at == study.last_received_at,
                )
                .values(
                    state=new_state,
                    state_reason=reason,
                    state_changed_at=at,
                    force_complete_by=None,  # a request is used up by the study it fired
                    routing_rule=rule,
                    times_fired=Study.times_fired + (1 if new_state is StudyState.COMPLETE else 0),
                )
                .execution_options(synchronize_session=False)
            )
        )
        == 1
    )
