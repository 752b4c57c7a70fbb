"""Errors raised by the storage layer."""

from __future__ import annotations

from segnode.config.errors import SegnodeError


class StorageError(SegnodeError):
    """Base for storage failures."""


class UnsafeUidError(StorageError):
    """A UID that is not a valid DICOM UID cannot become part of a file path."""


class DatabaseSchemaError(StorageError):
    """The database is not at the schema version this code expects."""


class JobStateError(StorageError):
    """A job command that does not fit the job's state (e.g. retrying a job that is done)."""


class IdentityConflictError(StorageError):
    """A study or series UID already recorded under another patient or another study.

    Merging would put two patients' images in one study; the instance is refused
    and quarantined instead. The message names no patient attribute.
    """


class DiskFloorError(StorageError):
    """Writing would take free disk space below the configured floor.

    Raised by ``FileStore.reserve`` before anything is written, so the caller
    can refuse the instance (Out of Resources) instead of filling the disk.
    """

    def __init__(self, nbytes: int, free_mb: float, reserved_mb: float, floor_mb: float) -> None:
        super().__init__(
            f"refusing to write {nbytes} bytes: {free_mb:.0f} MiB free, {reserved_mb:.0f} MiB "
            f"reserved by writes in flight, floor {floor_mb:.0f} MiB; free disk space"
        )
        self.nbytes = nbytes
        self.free_mb = free_mb
        self.reserved_mb = reserved_mb
        self.floor_mb = floor_mb


class FileGroupError(StorageError):
    """``storage.file_group`` names a group that does not exist or cannot be used."""
