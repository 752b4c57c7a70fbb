"""Studies: the list with completion state and reason, and "complete this study now"."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import ConflictError, NotFoundError
from segnode.storage.audit import record_audit
from segnode.storage.database import read_only_session
from segnode.storage.models import Study, UserRole
from segnode.storage.queries import StudyRow, list_studies
from segnode.storage.studies import request_force_complete


def studies(sessions: sessionmaker[Session], *, newest_first: bool = False) -> list[StudyRow]:
    with read_only_session(sessions) as session:
        rows = list_studies(session)
    return rows[::-1] if newest_first else rows


def force_complete(sessions: sessionmaker[Session], actor: Actor, study_id: int) -> None:
    """Ask the completion monitor to fire a study that is still waiting (within a second).

    For a study whose sender will never send the rest, or whose quiet time the operator
    does not want to wait out; routing still applies (an ignored study stays ignored).
    """
    actor.require(UserRole.OPERATOR, "completing a study by hand")
    with sessions.begin() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise NotFoundError(f"no study {study_id}")
        if not request_force_complete(session, study_id, actor.name):
            raise ConflictError(f"study {study_id} is {study.state}: only a receiving study can be completed")
        record_audit(session, actor.name, "study.force_complete", f"study {study_id}", client=actor.client)
