"""The audit log: who did what to the node, when, from where (append-only, like job events).

Every state-changing action through the service layer (``segnode.node.admin``), from the
dashboard, the REST API or the command line, and every sign-in attempt, is one row. Failed
sign-ins are rows too (``ok`` false): the login rate limit counts them here, so it holds
across restarts and across several web processes sharing one database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from segnode.storage.models import AuditEvent, utc_now

LOGIN = "login"
"""The action of a sign-in attempt (``target`` is the user name given)."""


def record_audit(
    session: Session,
    actor: str,
    action: str,
    target: str | None = None,
    *,
    ok: bool = True,
    client: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one row (committed with the caller's transaction, so the action and its
    record land together or not at all)."""
    row = AuditEvent(
        at=utc_now(),
        actor=actor[:160],
        action=action,
        target=None if target is None else target[:160],
        ok=ok,
        client=None if client is None else client[:64],
        detail=detail or {},
    )
    session.add(row)
    return row


def failed_logins_since(session: Session, username: str, client: str | None, since: datetime) -> int:
    """Failed sign-ins for ``username`` or from ``client`` since ``since`` (the rate limit)."""
    who = AuditEvent.target == username
    where = or_(who, AuditEvent.client == client) if client else who
    return int(
        session.execute(
            select(func.count(AuditEvent.id)).where(
                AuditEvent.action == LOGIN, AuditEvent.ok.is_(False), AuditEvent.at >= since, where
            )
        ).scalar_one()
    )


def login_window_start(window_s: float) -> datetime:
    return utc_now() - timedelta(seconds=window_s)


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    ok: bool
    client: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "ok": self.ok,
            "client": self.client,
            "detail": self.detail,
        }


def list_audit(session: Session, limit: int = 200, actor: str | None = None, action: str | None = None) -> list[AuditRow]:
    """The newest ``limit`` rows first, optionally of one actor or action."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action == action)
    return [
        AuditRow(e.id, e.at, e.actor, e.action, e.target, e.ok, e.client, dict(e.detail))
        for e in session.execute(query).scalars()
    ]
