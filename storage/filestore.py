"""The node's files: received instances, quarantine, and the temporary area.

Why atomic writes: the C-STORE response promises the peer that the instance is
safe. Each file is written to ``tmp/`` on the same filesystem, fsynced, renamed
into place and its directory fsynced, so a crash leaves either the whole file
or nothing, never a torn instance under ``store/``. A write that fails (disk
full, I/O error) removes its partial file at once rather than at the next start.

Why explicit modes: the files are patient images. Every folder and file is
created owner-only (0700/0600), or readable by ``storage.file_group``
(0750/0640), whatever the process umask, so a permissive umask or a missing
``UMask=`` in the unit cannot expose them.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segnode.storage.errors import DiskFloorError, FileGroupError, UnsafeUidError

_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_MIB = 1024 * 1024


def check_uid(uid: str) -> str:
    """Return ``uid`` if it is a syntactically valid DICOM UID (PS3.5 9.1), else raise.

    Only digits and dots, at most 64 characters: that is also what makes a UID
    safe to use as a file name.
    """
    if not uid or len(uid) > 64 or not _UID_PATTERN.match(uid):
        # Never quote it: an overrunning "UID" carries the elements after it (patient data).
        raise UnsafeUidError(f"not a valid DICOM UID ({len(uid)} characters)")
    return uid


@dataclass(frozen=True, slots=True)
class FileModes:
    """Mode and group for everything the node writes (files, folders, the SQLite database).

    Modes are set with ``fchmod``/``chmod`` after creation, so the umask can only
    ever be stricter at the instant of creation, never looser afterwards.
    """

    file_mode: int
    dir_mode: int
    gid: int | None
    """Group to hand the files to; None keeps the creator's group (owner-only modes)."""

    @classmethod
    def for_group(cls, group: str) -> FileModes:
        """Owner only for ``""``; owner plus ``group`` (read-only) otherwise.

        Raises:
            FileGroupError: ``group`` is not a known group name.
        """
        if not group:
            return cls(file_mode=0o600, dir_mode=0o700, gid=None)
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise FileGroupError(
                f"storage.file_group {group!r} is not a group on this host: "
                "create it, or leave file_group empty for owner-only files"
            ) from None
        return cls(file_mode=0o640, dir_mode=0o750, gid=gid)

    def create_file(self, path: Path) -> int:
        """Create ``path`` exclusively with these modes; return its open descriptor (write-only)."""
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        try:
            if self.gid is not None:
                os.fchown(descriptor, -1, self.gid)
            os.fchmod(descriptor, self.file_mode)
        except BaseException:
            os.close(descriptor)
            path.unlink(missing_ok=True)
            raise
        return descriptor

    def apply_file(self, path: Path) -> None:
        """Give an existing file these modes (files from older versions, SQLite's own)."""
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        os.chmod(path, self.file_mode)

    def apply_dir(self, folder: Path) -> None:
        if self.gid is not None:
            os.chown(folder, -1, self.gid)
        os.chmod(folder, self.dir_mode)

    def make_dirs(self, folder: Path) -> None:
        """``mkdir -p`` where every folder created gets these modes (not the umask's)."""
        missing: list[Path] = []
        current = folder
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for created in reversed(missing):
            try:
                os.mkdir(created, self.dir_mode)
            except FileExistsError:
                continue  # another thread made it (and sets its mode)
            self.apply_dir(created)


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    path: Path
    """Relative to the quarantine root."""
    reason: str


class FileStore:
    """Files under one data directory: ``store/``, ``quarantine/``, ``tmp/``.

    One process owns a data directory (the disk reservations are counted in
    memory), so a second node must not share it.
    """

    def __init__(self, data_dir: Path, fsync: bool = True, file_group: str = "") -> None:
        """Create (or tighten) the data directory's folders.

        Args:
            data_dir: Root of the node's files.
            fsync: Flush files and folders to disk before a write returns.
            file_group: ``storage.file_group``; empty means owner-only files.

        Raises:
            FileGroupError: ``file_group`` is not a known group.
        """
        self.data_dir = Path(data_dir).resolve()
        self.store_root = self.data_dir / "store"
        self.quarantine_root = self.data_dir / "quarantine"
        self.tmp_root = self.data_dir / "tmp"
        self.fsync = fsync
        self.modes = FileModes.for_group(file_group)
        self._reservation_lock = threading.Lock()
        self._reserved_bytes = 0
        self.modes.make_dirs(self.data_dir)
        # Tighten folders made by older versions too (they were 0755). The data
        # directory itself may be a mount point that belongs to someone else.
        if self.data_dir.stat().st_uid == os.geteuid():
            self.modes.apply_dir(self.data_dir)
        for folder in (self.store_root, self.quarantine_root, self.tmp_root):
            self.modes.make_dirs(folder)
            self.modes.apply_dir(folder)

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
        relative = self._quarantine_relative(now)
        target = self.quarantine_root / relative
        self._write_atomic(target, data)
        self._write_note(target, reason, now, details)
        return QuarantineRecord(path=relative, reason=reason)

    def quarantine_file(
        self, source: Path, reason: str, details: dict[str, Any]
    ) -> QuarantineRecord:
        """Move an existing file (e.g. an orphan under ``store/``) into quarantine, bytes intact.

        A rename on the same filesystem, so a large store's orphans cost no copy.
        """
        now = datetime.now(UTC)
        relative = self._quarantine_relative(now)
        target = self.quarantine_root / relative
        self.modes.make_dirs(target.parent)
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # quarantine/ on another filesystem
                raise
            shutil.move(source, target)
        self.modes.apply_file(target)
        if self.fsync:
            _fsync_directory(target.parent)
            _fsync_directory(self.quarantine_root)
            _fsync_directory(source.parent)
        self._write_note(target, reason, now, details)
        return QuarantineRecord(path=relative, reason=reason)

    def store_files(self) -> Iterator[str]:
        """Every file under ``store/``, relative to it as ``instances.file_path`` has it.

        One walk of the tree (``os.walk`` uses ``scandir``: no stat per file).
        """
        root = str(self.store_root)
        for folder, _dirs, files in os.walk(root):
            relative_folder = os.path.relpath(folder, root)
            for name in files:
                yield name if relative_folder == "." else f"{relative_folder}/{name}"

    def free_bytes(self) -> int:
        """Free space on the data directory's filesystem, in bytes (for unprivileged users)."""
        return shutil.disk_usage(self.data_dir).free

    def free_mb(self) -> float:
        """Free space on the data directory's filesystem, in MiB."""
        return self.free_bytes() / _MIB

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by writes in flight (see :meth:`reserve`)."""
        with self._reservation_lock:
            return self._reserved_bytes

    @contextmanager
    def reserve(self, nbytes: int, floor_mb: float) -> Iterator[None]:
        """Hold ``nbytes`` of disk space for one write, or refuse before anything is written.

        Why not just check ``free_mb()``: concurrent associations each see the
        same free space and together overshoot the floor by their combined size.
        Under one lock, the check counts what every write in flight has reserved
        and adds this one. The reservation lasts until the ``with`` block ends
        (count it generously: a finished write is briefly counted twice, which
        errs on the safe side).

        Usage::

            with store.reserve(len(file_bytes), settings.min_free_disk_mb):
                store.write_instance(relative, file_bytes)

        Args:
            nbytes: What the write will add to the disk, in bytes.
            floor_mb: Free space that must remain afterwards, in MiB.

        Raises:
            DiskFloorError: free - reserved - nbytes would fall below the floor;
                it carries ``free_mb``, ``reserved_mb`` and ``floor_mb``.
        """
        if nbytes < 0:
            raise ValueError(f"cannot reserve {nbytes} bytes")
        with self._reservation_lock:
            free = self.free_bytes()
            if free - self._reserved_bytes - nbytes < floor_mb * _MIB:
                raise DiskFloorError(nbytes, free / _MIB, self._reserved_bytes / _MIB, floor_mb)
            self._reserved_bytes += nbytes
        try:
            yield
        finally:
            with self._reservation_lock:
                self._reserved_bytes -= nbytes

    def clear_tmp(self) -> int:
        """Remove partial writes left by a crash; they were never acknowledged."""
        removed = 0
        for leftover in self.tmp_root.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def _quarantine_relative(self, now: datetime) -> Path:
        return Path(now.strftime("%Y%m%d"), f"{now.strftime('%H%M%S')}-{uuid.uuid4().hex}.dcm")

    def _write_note(
        self, target: Path, reason: str, now: datetime, details: dict[str, Any]
    ) -> None:
        note = {"reason": reason, "quarantined_at": now.isoformat(), **details}
        self._write_atomic(target.with_suffix(".json"), json.dumps(note, indent=2).encode())

    def _write_atomic(self, target: Path, data: bytes) -> None:
        if not target.parent.is_dir():
            self.modes.make_dirs(target.parent)
            if self.fsync:
                # New folders (a new study or series) must survive a crash too.
                _fsync_directory(target.parent.parent)
                _fsync_directory(target.parent.parent.parent)
        temporary = self.tmp_root / f"{uuid.uuid4().hex}.part"
        try:
            with open(self.modes.create_file(temporary), "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            # Disk full, I/O error, interrupted: the partial file was never
            # acknowledged and must not wait for the next start to be removed.
            temporary.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_directory(target.parent)


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
