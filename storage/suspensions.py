"""Suspended routing rules and destinations: read each time they are used, so a switch
takes effect at the next completion tick or delivery attempt, without a restart."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from segnode.storage.database import rowcount
from segnode.storage.models import Suspension, utc_now

SuspendedKind = Literal["rule", "destination"]


def suspended(session: Session, kind: SuspendedKind) -> dict[str, Suspension]:
    """Name -> its suspension, for every suspended rule (or destination)."""
    return {row.name: row for row in session.execute(select(Suspension).where(Suspension.kind == kind)).scalars()}


def suspend(session: Session, kind: SuspendedKind, name: str, by: str, reason: str | None) -> bool:
    """Suspend ``name``; False if it already was."""
    if name in suspended(session, kind):
        return False
    session.add(Suspension(kind=kind, name=name, by=by, at=utc_now(), reason=reason))
    session.flush()
    return True


def resume(session: Session, kind: SuspendedKind, name: str) -> bool:
    """Lift the suspension of ``name``; False if it was not suspended."""
    removed = session.execute(delete(Suspension).where(Suspension.kind == kind, Suspension.name == name))
    return bool(rowcount(removed))
