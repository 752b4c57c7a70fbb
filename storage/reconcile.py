"""Make the files and the rows agree again at start-up.

Why at start-up: an instance is written to ``store/`` first, recorded second and
acknowledged only after the commit. A kill between the write and the commit
leaves a file that no row knows about. The sender never got Success (it will
send again), so the file is not needed, but it is patient data that nothing
would ever account for or clean up: it is moved to quarantine with a note and a
row, bytes intact. The opposite, a row whose file has gone (deleted by hand, a
restored backup), cannot be repaired here; it is recorded as a node event and
the row is kept, so the loss stays visible.

Why it stays fast on a large store: one walk of ``store/`` and one query for
the known paths, compared in memory; only counts are logged.

The association rows a previous process left open are ended by
``segnode.storage.associations.end_open_associations`` (at start-up and at a clean stop).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from segnode.storage.errors import UnsafeUidError
from segnode.storage.events import record_node_event
from segnode.storage.filestore import FileStore, check_uid
from segnode.storage.models import Instance
from segnode.storage.quarantine import record_quarantine

log = logging.getLogger(__name__)

ORPHAN_REASON = "orphan file: written but never acknowledged"
NO_RESPONSE_STATUS = -1
"""``quarantine.status_code`` when the sender got no response at all (the node stopped first)."""
MISSING_FILES_LISTED = 100
"""At most this many missing paths are listed in the node event (the count is always exact)."""


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What start-up reconciliation found (counts only: nothing here identifies a patient)."""

    partial_files_removed: int
    orphans_quarantined: int
    missing_files: int

    def as_detail(self) -> dict[str, int]:
        return {
            "partial_files_removed": self.partial_files_removed,
            "orphans_quarantined": self.orphans_quarantined,
            "missing_files": self.missing_files,
        }


def reconcile_storage(store: FileStore, sessions: sessionmaker[Session]) -> ReconcileReport:
    """Clear ``tmp/``, quarantine orphan files, record rows whose file is missing.

    Call it before the listener starts: nothing may be writing to ``store/``
    meanwhile, or a file written but not yet recorded would look orphaned.
    """
    partial = store.clear_tmp()
    with sessions() as session:
        unseen = set(session.scalars(select(Instance.file_path)))
    orphans: list[str] = []
    for relative in store.store_files():
        if relative in unseen:
            unseen.remove(relative)
        else:
            orphans.append(relative)
    missing = sorted(unseen)  # every known path the walk did not meet

    with sessions.begin() as session:
        for relative in orphans:
            _quarantine_orphan(session, store, relative)
        if missing:
            record_node_event(
                session,
                "instance_files_missing",
                {"count": len(missing), "file_paths": missing[:MISSING_FILES_LISTED]},
            )
    report = ReconcileReport(partial, len(orphans), len(missing))
    if orphans or missing:
        log.warning("store reconciled with the database", extra=report.as_detail())
    return report


def _quarantine_orphan(session: Session, store: FileStore, relative: str) -> None:
    source = store.absolute(relative)
    kept = store.quarantine_file(source, ORPHAN_REASON, {"store_path": relative})
    record_quarantine(
        session,
        reason=ORPHAN_REASON,
        status_code=NO_RESPONSE_STATUS,
        file_path=str(kept.path),
        sop_instance_uid=_sop_uid_from_name(relative),
        sop_class_uid=None,
        calling_ae=None,
        association_id=None,
    )
    _remove_empty_folders(source.parent, store.store_root)


def _sop_uid_from_name(relative: str) -> str | None:
    """Stored files are named ``<SOP Instance UID>.dcm``; anything else has no UID to give."""
    name = os.path.basename(relative)
    if not name.endswith(".dcm"):
        return None
    try:
        return check_uid(name.removesuffix(".dcm"))
    except UnsafeUidError:
        return None


def _remove_empty_folders(folder: str | os.PathLike[str], root: os.PathLike[str]) -> None:
    """Drop series and study folders the orphan leaves empty (never ``root`` itself)."""
    current = os.path.abspath(folder)
    stop = os.path.abspath(root)
    while current != stop and current.startswith(stop + os.sep):
        try:
            os.rmdir(current)
        except OSError:
            return  # not empty
        current = os.path.dirname(current)
