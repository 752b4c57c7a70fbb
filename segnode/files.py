"""Atomic file writes: a file either exists whole under its name, or not at all.

Why one function: results, job-folder files, label maps, checkpoints and model weights are
all read by something that must never see half a file (a resumed job, a PACS, a resumed
training run, the checksum gate). Each is written under a hidden temporary name in the same
folder (so the rename cannot cross filesystems), then renamed over the target with
``os.replace``, which POSIX makes atomic. A failed write removes its temporary file at once.

What the rename does not give is durability across a power cut: that needs the file's bytes
flushed before the rename (``fsync=True``) and the folder flushed after it (:func:`fsync_dir`),
which a caller writing several files does once at the end. The node's received instances
(``storage/filestore.py``) keep their own writer, because they are staged in ``tmp/`` with
explicit permissions and a disk reservation; they share :func:`fsync_dir`.

This module imports nothing from segnode (the lowest import layer, with ``segnode.vocabulary``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

PARTIAL_PREFIX = ".partial-"
"""Prefix of the temporary name. It keeps the target's suffix, because several writers pick
the format from it (nibabel ``.nii.gz``, SimpleITK ``.mha``/``.tfm``)."""


def partial_path(path: Path) -> Path:
    """The temporary name :func:`atomic_write` writes ``path`` under first."""
    return path.with_name(f"{PARTIAL_PREFIX}{path.name}")


def atomic_write(path: Path, write_fn: Callable[[Path], object], *, fsync: bool = False) -> Path:
    """Write ``path`` through ``write_fn(temporary_path)``, then rename it into place.

    Args:
        path: the target; its folder must exist (callers decide who creates folders).
        write_fn: writes the complete file at the path it is given (its return value is
            ignored), e.g. ``lambda tmp: dataset.save_as(tmp)``.
        fsync: flush the file's bytes to disk before the rename. The rename itself is
            durable only after :func:`fsync_dir` of the folder.

    Returns:
        ``path``.

    Raises:
        OSError: whatever ``write_fn``, the flush or the rename raised (a full disk, say);
            the temporary file is gone and an earlier file at ``path`` is untouched.
    """
    temporary = partial_path(path)
    try:
        write_fn(temporary)
        if fsync:
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (created, renamed or removed files) to disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
