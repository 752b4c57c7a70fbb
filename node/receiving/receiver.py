"""Turning one received C-STORE into a stored, recorded instance and a status.

This is the whole contract of the listener: a Success status is returned only
after the file is durable under ``store/`` and its row is committed. Anything
refused is kept in ``quarantine/`` with the reason and a failure status, and
the association goes on. Kept free of pynetdicom so it can be tested and
benchmarked on its own; ``node/receiving/scp.py`` adapts pynetdicom events to it.
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

from segnode.config.settings import DuplicatePolicy, StorageSettings
from segnode.node.errors import InvalidInstanceError
from segnode.node.logs import quiet_pydicom_reading
from segnode.node.receiving.header import (
    DEFAULT_MAX_DATASET_BYTES,
    InstanceHeader,
    read_instance_header,
)
from segnode.storage.database import read_only_session
from segnode.storage.errors import DiskFloorError, IdentityConflictError, UnsafeUidError
from segnode.storage.events import record_node_event
from segnode.storage.filestore import FileStore, check_uid
from segnode.storage.instance_writer import InstanceWriter
from segnode.storage.instances import (
    InstanceRecord,
    find_instance,
    identity_conflict,
    record_instance,
    replace_instance,
    stored_fingerprint,
)
from segnode.storage.models import utc_now
from segnode.storage.quarantine import record_quarantine

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0xC211
STATUS_IDENTITY_CONFLICT = 0xC212
"""Refused (Cxxx, implementation-specific): the study or series belongs to another patient."""
_LOCK_STRIPES = 64


def _valid_uid_or_none(uid: str) -> str | None:
    """A command UID worth recording: a valid UID, else nothing (it may be any bytes)."""
    try:
        return check_uid(uid.strip())
    except UnsafeUidError:
        return None


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
        max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
    ) -> None:
        self._store = store
        self._max_dataset_bytes = max_dataset_bytes
        # This is where hostile bytes are read: no pydicom warning may quote them.
        quiet_pydicom_reading()
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
        context_sop_class_uid: str | None = None,
    ) -> StoreOutcome:
        """Handle one instance; returns the DIMSE status for the C-STORE response.

        Never raises: whatever goes wrong becomes a failure status, and the
        bytes are kept in quarantine where that is still possible.
        """
        # The instance's size is reserved against the floor for the whole receive
        # (store or quarantine copy): concurrent associations cannot overshoot it.
        try:
            with self._store.reserve(len(file_bytes), self._settings.min_free_disk_mb):
                self._disk_recovered()
                return self._validate_and_store(
                    file_bytes,
                    command_sop_class_uid=command_sop_class_uid,
                    command_sop_instance_uid=command_sop_instance_uid,
                    context_sop_class_uid=context_sop_class_uid,
                    sender=sender,
                )
        except DiskFloorError as exc:
            self._disk_below_floor(exc, sender)
            return StoreOutcome(STATUS_OUT_OF_RESOURCES, "free disk space below the floor")
        except Exception as exc:  # noqa: BLE001 - the listener must keep serving
            # The exception's text may quote dataset values: log its type only.
            reason = f"internal error while receiving ({type(exc).__name__})"
            log.error("C-STORE failed: %s", reason, extra={"calling_ae": sender.calling_ae})
            self._quarantine_safely(file_bytes, reason, STATUS_PROCESSING_FAILURE, sender)
            return StoreOutcome(STATUS_PROCESSING_FAILURE, reason)

    def _validate_and_store(
        self,
        file_bytes: bytes,
        *,
        command_sop_class_uid: str,
        command_sop_instance_uid: str,
        context_sop_class_uid: str | None,
        sender: Sender,
    ) -> StoreOutcome:
        try:
            header = read_instance_header(
                file_bytes,
                command_sop_class_uid=command_sop_class_uid,
                command_sop_instance_uid=command_sop_instance_uid,
                context_sop_class_uid=context_sop_class_uid,
                extra_keywords=self._extra_keywords,
                max_dataset_bytes=self._max_dataset_bytes,
            )
        except InvalidInstanceError as exc:
            self._quarantine_safely(
                file_bytes,
                exc.reason,
                exc.status,
                sender,
                _valid_uid_or_none(command_sop_instance_uid),
                _valid_uid_or_none(command_sop_class_uid),
            )
            return StoreOutcome(exc.status, exc.reason)

        stripe = self._stripes[hash(header.sop_instance_uid) % _LOCK_STRIPES]
        with stripe:
            try:
                return self._store_and_record(file_bytes, header, sender)
            except IdentityConflictError as exc:
                return self._refuse_identity(file_bytes, header, sender, str(exc))
            except OSError as exc:
                log.error("could not write instance: %s", exc.strerror, extra={"errno": exc.errno})
                return StoreOutcome(STATUS_OUT_OF_RESOURCES, f"write failed: {exc.strerror}")

    def refuse(
        self,
        file_bytes: bytes,
        *,
        status: int,
        reason: str,
        sender: Sender,
        command_sop_class_uid: str,
        command_sop_instance_uid: str,
    ) -> StoreOutcome:
        """Refuse a C-STORE the listener judged itself (quarantine, row, event, status)."""
        self._quarantine_safely(
            file_bytes,
            reason,
            status,
            sender,
            _valid_uid_or_none(command_sop_instance_uid),
            _valid_uid_or_none(command_sop_class_uid),
        )
        return StoreOutcome(status, reason)

    def _refuse_identity(
        self, file_bytes: bytes, header: InstanceHeader, sender: Sender, reason: str
    ) -> StoreOutcome:
        self._quarantine(
            file_bytes,
            reason,
            STATUS_IDENTITY_CONFLICT,
            sender,
            header.sop_instance_uid,
            header.sop_class_uid,
        )
        with self._sessions.begin() as session:
            record_node_event(
                session,
                "identity_conflict",
                {
                    "reason": reason,
                    "study_instance_uid": header.study_instance_uid,
                    "series_instance_uid": header.series_instance_uid,
                    "sop_instance_uid": header.sop_instance_uid,
                },
                association_id=sender.association_id,
            )
        return StoreOutcome(STATUS_IDENTITY_CONFLICT, reason)

    def _disk_recovered(self) -> None:
        if self._disk_low:
            self._disk_low = False
            log.warning(
                "free disk space back above the floor", extra={"free_mb": int(self._store.free_mb())}
            )

    def _disk_below_floor(self, exc: DiskFloorError, sender: Sender) -> None:
        floor_mb = self._settings.min_free_disk_mb
        free_mb = int(exc.free_mb)
        log.warning(
            "refusing C-STORE: free disk space below the floor",
            extra={
                "free_mb": free_mb,
                "reserved_mb": int(exc.reserved_mb),
                "floor_mb": floor_mb,
                "calling_ae": sender.calling_ae,
            },
        )
        if not self._disk_low:
            self._disk_low = True
            try:
                with self._sessions.begin() as session:
                    record_node_event(
                        session,
                        "disk_low",
                        {"free_mb": free_mb, "floor_mb": floor_mb},
                        association_id=sender.association_id,
                    )
            except Exception as event_error:  # noqa: BLE001 - the refusal still goes out
                log.error("could not record disk_low (%s)", type(event_error).__name__)

    def _store_and_record(
        self, file_bytes: bytes, header: InstanceHeader, sender: Sender
    ) -> StoreOutcome:
        sha256 = hashlib.sha256(file_bytes).hexdigest()
        relative = self._store.instance_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        record = self._record(header, sha256, len(file_bytes), str(relative), sender, utc_now())

        with read_only_session(self._sessions) as session:
            conflict = identity_conflict(
                session,
                header.study_instance_uid,
                header.series_instance_uid,
                header.patient_key,
            )
            existing = stored_fingerprint(session, header.sop_instance_uid)
        if conflict is not None:
            raise IdentityConflictError(conflict)
        if existing is not None:
            existing_sha, existing_path = existing
            if existing_sha == sha256:
                log.debug(
                    "identical re-send acknowledged", extra={"sop_uid": header.sop_instance_uid}
                )
                return StoreOutcome(STATUS_SUCCESS, "identical duplicate ignored")
            return self._different_duplicate(file_bytes, record, existing_path)

        written = self._store.write_instance(relative, file_bytes)
        try:
            recorded = self._writer.record(record)
        except IdentityConflictError:
            # Another sender recorded this study or series for someone else in
            # between: the file just written is ours alone (a new SOP Instance UID).
            written.unlink(missing_ok=True)
            raise
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
            patient_key=header.patient_key,
        )

    def _quarantine_safely(
        self,
        file_bytes: bytes,
        reason: str,
        status: int,
        sender: Sender,
        sop_instance_uid: str | None = None,
        sop_class_uid: str | None = None,
    ) -> None:
        """Quarantine a refused instance; a failure to do so is logged, never raised."""
        try:
            self._quarantine(file_bytes, reason, status, sender, sop_instance_uid, sop_class_uid)
        except Exception as exc:  # noqa: BLE001 - the refusal status still goes out
            log.error(
                "could not record a quarantined instance (%s)",
                type(exc).__name__,
                extra={"calling_ae": sender.calling_ae},
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
        """Keep the bytes with a note and a row; the row is written even if the copy is not.

        Why the row without the copy: on a full disk the bytes cannot be kept, but
        the operator must still see that an instance was refused, from whom and why.
        """
        kept_path: str | None
        try:
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
            kept_path = str(kept.path)
        except OSError as exc:
            kept_path = None
            reason = f"{reason} (quarantine copy not kept: {exc.strerror or type(exc).__name__})"
        with self._sessions.begin() as session:
            row = record_quarantine(
                session,
                reason=reason,
                status_code=status,
                file_path=kept_path,
                sop_instance_uid=sop_instance_uid,
                sop_class_uid=sop_class_uid,
                calling_ae=sender.calling_ae,
                association_id=sender.association_id,
            )
            session.flush()
            record_node_event(
                session,
                "instance_quarantined",
                {
                    "quarantine_id": row.id,
                    "status": f"0x{status:04X}",
                    "reason": reason,
                    "calling_ae": sender.calling_ae,
                },
                association_id=sender.association_id,
            )
        log.warning(
            "instance quarantined: %s",
            reason,
            extra={
                "status": f"0x{status:04X}",
                "quarantine_file": kept_path,
                "calling_ae": sender.calling_ae,
            },
        )
