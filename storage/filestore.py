"""The node's files: received instances, quarantine, and the temporary area.

Why atomic writes: the C-STORE response promises the peer that the instance is
safe. Each file is written to ``tmp/`` on the same filesystem, fsynced, renamed
into place and its directory fsynced, so a crash leaves either the whole file
or nothing, never a torn instance under ``store/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.errors import UnsafeUidError

_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_uid(uid: str) -> str:
    """Return ``uid`` if it is a syntactically valid DICOM UID (PS3.5 9.1), else raise.

    Only digits and dots, at most 64 characters: that is also what makes a UID
    safe to use as a file name.
    """
    if not uid or len(uid) > 64 or not _UID_PATTERN.match(uid):
        raise UnsafeUidError(f"not a valid DICOM UID: {uid[:80]!r}")
    return uid


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    path: Path
    """Relative to the quarantine root."""
    reason: str


class FileStore:
    """Files under one data directory: ``store/``, ``quarantine/``, ``tmp/``."""

    def __init__(self, data_dir: Path, fsync: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.store_root = self.data_dir / "store"
        self.quarantine_root = self.data_dir / "quarantine"
        self.tmp_root = self.data_dir / "tmp"
        self.fsync = fsync
        for folder in (self.store_root, self.quarantine_root, self.tmp_root):
            folder.mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The relative path an instance is stored under."""
        return Path(check_uid(study_uid), check_uid(series_uid), f"{check_uid(sop_uid)}.dcm")

    def absolute(self, relative: Path | str) -> Path:
        return self.store_root / relative

    def write_instance(self, relative: Path, data: bytes) -> Path:
        """Write ``data`` atomically to ``store/relative``; return the absolute path."""
        target = self.store_root / relative
        self._write_atomic(target, data)
        return target

    def quarantine(self, data: bytes, reason: str, details: dict[str, Any]) -> QuarantineRecord:
        """Keep bytes that were refused (or superseded) with a JSON note of why."""
        now = datetime.now(UTC)
        relative = Path(now.strftime("%Y%m%d"), f"{now.strftime('%H%M%S')}-{uuid.uuid4().hex}.dcm")
        target = self.quarantine_root / relative
        self._write_atomic(target, data)
        note = {"reason": reason, "quarantined_at": now.isoformat(), **details}
        self._write_atomic(target.with_suffix(".json"), json.dumps(note, indent=2).encode())
        return QuarantineRecord(path=relative, reason=reason)

    def free_mb(self) -> float:
        """Free space on the data directory's filesystem, in MiB."""
        return shutil.disk_usage(self.data_dir).free / (1024 * 1024)

    def clear_tmp(self) -> int:
        """Remove partial writes left by a crash; they were never acknowledged."""
        removed = 0
        for leftover in self.tmp_root.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def _write_atomic(self, target: Path, data: bytes) -> None:
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                # New folders (a new study or series) must survive a crash too.
                _fsync_directory(target.parent.parent)
                _fsync_directory(target.parent.parent.parent)
        temporary = self.tmp_root / f"{uuid.uuid4().hex}.part"
        with temporary.open("wb") as handle:
            handle.write(data)
            if self.fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, target)
        if self.fsync:
            _fsync_directory(target.parent)


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
