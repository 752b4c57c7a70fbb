"""The audit log page and ``/api/audit`` (admin only: it shows who did what)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from segnode.node.admin.actors import Actor
from segnode.storage.audit import AuditRow, list_audit
from segnode.storage.database import read_only_session
from segnode.storage.models import UserRole


def audit_log(
    sessions: sessionmaker[Session], actor: Actor, *, limit: int = 200, action: str | None = None
) -> list[AuditRow]:
    actor.require(UserRole.ADMIN, "reading the audit log")
    with read_only_session(sessions) as session:
        return list_audit(session, limit=limit, action=action)
