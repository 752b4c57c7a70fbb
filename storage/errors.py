"""Errors raised by the storage layer."""

from __future__ import annotations

from config.errors import SegnodeError


class StorageError(SegnodeError):
    """Base for storage failures."""


class UnsafeUidError(StorageError):
    """A UID that is not a valid DICOM UID cannot become part of a file path."""


class DatabaseSchemaError(StorageError):
    """The database is not at the schema version this code expects."""


class JobStateError(StorageError):
    """A job command that does not fit the job's state (e.g. retrying a job that is done)."""
