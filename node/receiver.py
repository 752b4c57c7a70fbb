"""Turning one received C-STORE into a stored, recorded instance and a status.

This is the whole contract of the listener: a Success status is returned only
after the file is durable under ``store/`` and its row is committed. Anything
refused is kept in ``quarantine/`` with the reason and a failure status, and
the association goes on. Kept free of pynetdicom so it can be tested and
benchmarked on its own; ``node/scp.py`` adapts pynetdicom events to it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import DuplicatePolicy, StorageSettings
from node.dicom_header import InstanceHeader, read_instance_header
from node.errors import InvalidInstanceError
from storage.database import read_only_session
from storage.filestore import FileStore
from storage.ingest import (
    InstanceRecord,
    find_instance,
    record_instance,
    record_node_event,
    record_quarantine,
    replace_instance,
    stored_fingerprint,
)
from storage.instance_writer import InstanceWriter
from storage.models import utc_now

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0xC211
_LOCK_STRIPES = 64


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent an instance, over which association."""

    association_id: str | None
    calling_ae: str
    called_ae: str


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    status: int
    reason: str
    study_id: int | None = None


class InstanceReceiver:
    """Store, record or quarantine received instances; thread-safe."""

    def __init__(
        self,
        store: FileStore,
        sessions: sessionmaker[Session],
        settings: StorageSettings,
        extra_keywords: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._settings = settings
        self._extra_keywords = extra_keywords
        # Instances with the same SOP Instance UID are handled one at a time, so
        # two associations racing with different content cannot interleave.
        self._stripes = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._disk_low = False
        self._writer = InstanceWriter(sessions)

    def close(self) -> None:
        """Stop the writer thread (after the listener has stopped)."""
        self._writer.stop()

    def receive(
        self,
        file_bytes: bytes,
        *,
        command_sop_class_uid: str,
        command_sop_instance_uid: str,
        sender: Sender,
    ) -> StoreOutcome:
        """Handle one instance; returns the DIMSE status for the C-STORE response."""
        if not self._enough_disk(sender):
            return StoreOutcome(STATUS_OUT_OF_RESOURCES, "free disk space below the floor")
        try:
            header = read_instance_header(
                file_bytes,
                command_sop_class_uid=command_sop_class_uid,
                command_sop_instance_uid=command_sop_instance_uid,
                extra_keywords=self._extra_keywords,
            )
        except InvalidInstanceError as exc:
            self._quarantine(
                file_bytes,
                exc.reason,
                exc.status,
                sender,
                command_sop_instance_uid[:64] or None,
                command_sop_class_uid[:64] or None,
            )
            return StoreOutcome(exc.status, exc.reason)

        stripe = self._stripes[hash(header.sop_instance_uid) % _LOCK_STRIPES]
        with stripe:
            try:
                return self._store_and_record(file_bytes, header, sender)
            except OSError as exc:
                log.error("could not write instance: %s", exc.strerror, extra={"errno": exc.errno})
                return StoreOutcome(STATUS_OUT_OF_RESOURCES, f"write failed: {exc.strerror}")

    def _enough_disk(self, sender: Sender) -> bool:
        floor_mb = self._settings.min_free_disk_mb
        free_mb = self._store.free_mb()
        if free_mb >= floor_mb:
            if self._disk_low:
                self._disk_low = False
                log.warning("free disk space back above the floor", extra={"free_mb": int(free_mb)})
            return True
        log.warning(
            "refusing C-STORE: free disk space below the floor",
            extra={"free_mb": int(free_mb), "floor_mb": floor_mb, "calling_ae": sender.calling_ae},
        )
        if not self._disk_low:
            self._disk_low = True
            with self._sessions.begin() as session:
                record_node_event(
                    session,
                    "disk_low",
                    {"free_mb": int(free_mb), "floor_mb": floor_mb},
                    association_id=sender.association_id,
                )
        return False

    def _store_and_record(
        self, file_bytes: bytes, header: InstanceHeader, sender: Sender
    ) -> StoreOutcome:
        sha256 = hashlib.sha256(file_bytes).hexdigest()
        relative = self._store.instance_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        record = self._record(header, sha256, len(file_bytes), str(relative), sender, utc_now())

        with read_only_session(self._sessions) as session:
            existing = stored_fingerprint(session, header.sop_instance_uid)
        if existing is not None:
            existing_sha, existing_path = existing
            if existing_sha == sha256:
                log.debug(
                    "identical re-send acknowledged", extra={"sop_uid": header.sop_instance_uid}
                )
                return StoreOutcome(STATUS_SUCCESS, "identical duplicate ignored")
            return self._different_duplicate(file_bytes, record, existing_path)

        self._store.write_instance(relative, file_bytes)
        try:
            recorded = self._writer.record(record)
        except IntegrityError:
            # Another process recorded the same SOP Instance UID in between.
            log.warning("concurrent duplicate SOP Instance UID; re-evaluating")
            return self._store_and_record(file_bytes, header, sender)
        return StoreOutcome(STATUS_SUCCESS, "stored", recorded.study_id)

    def _different_duplicate(
        self, file_bytes: bytes, record: InstanceRecord, existing_path: str
    ) -> StoreOutcome:
        policy = self._settings.duplicates
        sender = Sender(record.association_id, record.calling_ae, record.called_ae)
        if policy is DuplicatePolicy.KEEP_FIRST:
            reason = "duplicate SOP Instance UID with different content; the first version is kept"
            self._quarantine(
                file_bytes,
                reason,
                STATUS_SUCCESS,
                sender,
                record.sop_instance_uid,
                record.sop_class_uid,
            )
            return StoreOutcome(STATUS_SUCCESS, reason)

        old_bytes = self._store.absolute(existing_path).read_bytes()
        reason = "superseded by a newer instance with the same SOP Instance UID"
        self._quarantine(
            old_bytes, reason, STATUS_SUCCESS, sender, record.sop_instance_uid, record.sop_class_uid
        )
        self._store.write_instance(Path(record.file_path), file_bytes)
        with self._sessions.begin() as session:
            existing = find_instance(session, record.sop_instance_uid)
            if existing is None:  # pragma: no cover - rows are never deleted
                recorded = record_instance(session, record)
            else:
                recorded = replace_instance(session, existing, record)
        return StoreOutcome(STATUS_SUCCESS, "replaced the stored version", recorded.study_id)

    def _record(
        self,
        header: InstanceHeader,
        sha256: str,
        size: int,
        relative: str,
        sender: Sender,
        received_at: datetime,
    ) -> InstanceRecord:
        return InstanceRecord(
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            modality=header.modality,
            series_number=header.series_number,
            series_description=header.series_description,
            attributes=header.attributes,
            size_bytes=size,
            sha256=sha256,
            file_path=relative,
            calling_ae=sender.calling_ae,
            called_ae=sender.called_ae,
            association_id=sender.association_id,
            received_at=received_at,
        )

    def _quarantine(
        self,
        file_bytes: bytes,
        reason: str,
        status: int,
        sender: Sender,
        sop_instance_uid: str | None,
        sop_class_uid: str | None,
    ) -> None:
        kept = self._store.quarantine(
            file_bytes,
            reason,
            {
                "status": f"0x{status:04X}",
                "calling_ae": sender.calling_ae,
                "called_ae": sender.called_ae,
                "association_id": sender.association_id,
                "sop_instance_uid": sop_instance_uid,
                "sop_class_uid": sop_class_uid,
            },
        )
        with self._sessions.begin() as session:
            record_quarantine(
                session,
                reason=reason,
                status_code=status,
                file_path=str(kept.path),
                sop_instance_uid=sop_instance_uid,
                sop_class_uid=sop_class_uid,
                calling_ae=sender.calling_ae,
                association_id=sender.association_id,
            )
        log.warning(
            "instance quarantined: %s",
            reason,
            extra={
                "status": f"0x{status:04X}",
                "quarantine_file": str(kept.path),
                "calling_ae": sender.calling_ae,
            },
        )
