"""``segnode.files.atomic_write``: a file exists whole under its name, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from segnode.files import atomic_write, fsync_dir, partial_path


def test_the_file_appears_whole_and_nothing_else_is_left(tmp_path: Path) -> None:
    target = tmp_path / "labels.nii.gz"
    seen: list[Path] = []

    def write(partial: Path) -> None:
        seen.append(partial)
        partial.write_bytes(b"complete")

    assert atomic_write(target, write, fsync=True) == target
    fsync_dir(tmp_path)
    assert target.read_bytes() == b"complete"
    # Written under a hidden name that keeps the suffix (nibabel and SimpleITK pick the
    # format from it), in the same folder (the rename cannot cross filesystems).
    assert seen == [partial_path(target)] and seen[0].name == ".partial-labels.nii.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")

    def fail(partial: Path) -> None:
        partial.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
