"""The quarantine: list, download, release (send it in again), delete.

Release sends the kept file to the node's own listener by C-STORE, so it goes through
exactly the checks any instance goes through (an instance still malformed is refused and
quarantined again, with the new reason shown); nothing bypasses the receive path. A
released or deleted entry's row and file go; the audit log keeps who, when and the SOP
Instance UID.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.destinations import DimseDestination
from segnode.config.settings import Settings
from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import ConflictError, InvalidInputError, NotFoundError
from segnode.node.delivery.dimse.scu import send_dimse
from segnode.node.delivery.outcome import DeliveryError
from segnode.storage.audit import record_audit
from segnode.storage.database import read_only_session
from segnode.storage.models import QuarantinedInstance, UserRole
from segnode.storage.queries import QuarantineRow, list_quarantine

RELEASE_CALLING_AE = "SEGNODE_QR"
"""The calling AE title a release arrives with (rules and logs can tell it apart)."""


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    id: int
    released: bool
    detail: str


def entries(sessions: sessionmaker[Session], limit: int = 500) -> list[QuarantineRow]:
    with read_only_session(sessions) as session:
        return list_quarantine(session, limit)


def file_of(settings: Settings, sessions: sessionmaker[Session], actor: Actor, entry_id: int) -> Path:
    """The kept file (for download; operators only: it holds patient data)."""
    actor.require(UserRole.OPERATOR, "downloading a quarantined instance")
    with read_only_session(sessions) as session:
        row = session.get(QuarantinedInstance, entry_id)
        if row is None:
            raise NotFoundError(f"no quarantine entry {entry_id}")
        relative = row.file_path
    if relative is None:
        raise ConflictError(f"quarantine entry {entry_id} has no copy (the disk was full when it came)")
    path = _quarantine_root(settings) / relative
    if not path.is_file():
        raise NotFoundError(f"quarantine entry {entry_id}: its file {relative} is gone")
    with sessions.begin() as session:
        record_audit(session, actor.name, "quarantine.download", f"quarantine {entry_id}", client=actor.client)
    return path


def release(settings: Settings, sessions: sessionmaker[Session], actor: Actor, entry_id: int) -> ReleaseResult:
    """Send the kept file to the node's own listener; on success the entry goes."""
    actor.require(UserRole.OPERATOR, "releasing a quarantined instance")
    path = file_of(settings, sessions, actor, entry_id)
    listener = settings.listener
    if listener.tls.enabled:
        raise InvalidInputError("release needs a plain DICOM listener; with TLS, re-send from the source")
    host = "127.0.0.1" if listener.host in ("0.0.0.0", "", "::") else listener.host
    own = DimseDestination(
        name="release", ae_title=listener.ae_title, host=host, port=listener.port,
        calling_ae=RELEASE_CALLING_AE, timeout_s=30,
    )
    with read_only_session(sessions) as session:
        uid = session.execute(
            select(QuarantinedInstance.sop_instance_uid).where(QuarantinedInstance.id == entry_id)
        ).scalar_one()
    try:
        send_dimse(own, [path])
        result = ReleaseResult(entry_id, True, "accepted by the listener")
    except DeliveryError as exc:
        result = ReleaseResult(entry_id, False, f"refused again: {exc}")
    with sessions.begin() as session:
        if result.released:
            _forget(settings, session, entry_id)
        record_audit(
            session, actor.name, "quarantine.release", f"quarantine {entry_id}", ok=result.released,
            client=actor.client, detail={"sop_instance_uid": uid, "detail": result.detail[:300]},
        )
    return result


def delete(settings: Settings, sessions: sessionmaker[Session], actor: Actor, entry_id: int) -> None:
    """Delete an entry and its file for good (admins only)."""
    actor.require(UserRole.ADMIN, "deleting a quarantined instance")
    with sessions.begin() as session:
        row = session.get(QuarantinedInstance, entry_id)
        if row is None:
            raise NotFoundError(f"no quarantine entry {entry_id}")
        uid, reason = row.sop_instance_uid, row.reason
        _forget(settings, session, entry_id)
        record_audit(
            session, actor.name, "quarantine.delete", f"quarantine {entry_id}", client=actor.client,
            detail={"sop_instance_uid": uid, "reason": reason[:300]},
        )


def _quarantine_root(settings: Settings) -> Path:
    return Path(settings.storage.data_dir) / "quarantine"


def _forget(settings: Settings, session: Session, entry_id: int) -> None:
    row = session.get(QuarantinedInstance, entry_id)
    if row is None:
        return
    if row.file_path is not None:
        path = _quarantine_root(settings) / row.file_path
        for kept in (path, path.with_suffix(".json")):
            kept.unlink(missing_ok=True)
    session.delete(row)
