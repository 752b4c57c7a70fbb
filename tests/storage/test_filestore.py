"""The file store: private modes whatever the umask, no partial files, reserved disk floor."""

from __future__ import annotations

import errno
import grp
import os
import resource
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from segnode.storage.database import create_db_engine, upgrade_to_head
from segnode.storage.errors import DiskFloorError, FileGroupError
from segnode.storage.filestore import FileStore

MIB = 1024 * 1024
RELATIVE = Path("1.2.3", "1.2.3.4", "1.2.3.4.5.dcm")


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The umask of an interactive shell: without explicit modes, files would be 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _everything(store: FileStore) -> list[Path]:
    """Every folder and file the store wrote: a stored instance, a quarantined one and its note."""
    store.write_instance(RELATIVE, b"instance bytes")
    kept = store.quarantine(b"refused bytes", "test", {"why": "testing"})
    quarantined = store.quarantine_root / kept.path
    return [
        store.data_dir,
        store.store_root,
        store.quarantine_root,
        store.tmp_root,
        store.absolute(RELATIVE).parent,
        store.absolute(RELATIVE).parent.parent,
        store.absolute(RELATIVE),
        quarantined.parent,
        quarantined,
        quarantined.with_suffix(".json"),
    ]


@pytest.mark.usefixtures("permissive_umask")
def test_owner_only_modes_under_a_permissive_umask(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    for path in _everything(store):
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    engine = create_db_engine(f"sqlite:///{store.data_dir / 'segnode.db'}")
    upgrade_to_head(engine)
    try:
        for name in ("segnode.db", "segnode.db-wal", "segnode.db-shm"):
            assert _mode(store.data_dir / name) == 0o600, name
    finally:
        engine.dispose()


@pytest.mark.usefixtures("permissive_umask")
def test_group_modes_when_a_file_group_is_set(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getegid()).gr_name
    store = FileStore(tmp_path / "data", file_group=group)
    for path in _everything(store):
        assert _mode(path) == (0o750 if path.is_dir() else 0o640), path
        assert path.stat().st_gid == os.getegid(), path
    engine = create_db_engine(f"sqlite:///{store.data_dir / 'segnode.db'}", file_group=group)
    upgrade_to_head(engine)
    try:
        for name in ("segnode.db", "segnode.db-wal", "segnode.db-shm"):
            assert _mode(store.data_dir / name) == 0o640, name
            assert (store.data_dir / name).stat().st_gid == os.getegid(), name
    finally:
        engine.dispose()


@pytest.mark.usefixtures("permissive_umask")
def test_folders_and_database_of_an_older_version_are_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for folder in ("store", "quarantine", "tmp"):
        (data_dir / folder).mkdir(parents=True)  # 0755 under this umask
    (data_dir / "segnode.db").touch()  # 0644
    store = FileStore(data_dir)
    create_db_engine(f"sqlite:///{data_dir / 'segnode.db'}").dispose()
    for folder in (store.data_dir, store.store_root, store.quarantine_root, store.tmp_root):
        assert _mode(folder) == 0o700, folder
    assert _mode(data_dir / "segnode.db") == 0o600


def test_unknown_file_group_is_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(FileGroupError, match="not a group on this host"):
        FileStore(tmp_path / "data", file_group="no-such-group-segnode")


def test_failed_replace_removes_the_temporary_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    # A folder where the instance should go: the write succeeds, the rename fails.
    (store.absolute(RELATIVE) / "in-the-way").mkdir(parents=True)
    with pytest.raises(OSError):
        store.write_instance(RELATIVE, b"x" * 4096)
    assert list(store.tmp_root.iterdir()) == []


def test_failed_partial_write_removes_the_temporary_file(tmp_path: Path) -> None:
    """A real short write: the file size limit stops it after 64 KiB (EFBIG, like ENOSPC)."""
    store = FileStore(tmp_path / "data")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # Python ignores SIGXFSZ
    try:
        with pytest.raises(OSError) as raised:
            store.write_instance(RELATIVE, b"x" * MIB)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert raised.value.errno == errno.EFBIG
    assert list(store.tmp_root.iterdir()) == []
    assert not store.absolute(RELATIVE).exists()


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, for a real ENOSPC; needs root and mount permission."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"TMPFS MOUNT NOT PERMITTED (ENOSPC test skipped): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full_write_removes_the_temporary_file(tiny_filesystem: Path) -> None:
    store = FileStore(tiny_filesystem / "data")
    with pytest.raises(OSError) as raised:
        store.write_instance(RELATIVE, b"x" * (2 * MIB))
    assert raised.value.errno == errno.ENOSPC
    assert list(store.tmp_root.iterdir()) == []
    store.write_instance(RELATIVE, b"small")  # the space came back at once
    assert store.absolute(RELATIVE).read_bytes() == b"small"


def test_reserve_refuses_below_the_floor_and_says_why(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    floor_mb = store.free_mb() + 1
    with pytest.raises(DiskFloorError) as raised, store.reserve(1, floor_mb):
        store.write_instance(RELATIVE, b"never written")
    assert raised.value.floor_mb == floor_mb
    assert not store.absolute(RELATIVE).exists()
    assert store.reserved_bytes == 0
    with store.reserve(len(b"fits"), 1):
        store.write_instance(RELATIVE, b"fits")
    assert store.reserved_bytes == 0


def test_reservation_is_released_when_the_write_fails(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    with pytest.raises(RuntimeError), store.reserve(10 * MIB, 1):
        assert store.reserved_bytes == 10 * MIB
        raise RuntimeError("write failed")
    assert store.reserved_bytes == 0


def test_concurrent_reservations_never_overshoot_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 writers of 10 MiB each against 100 MiB free and a 25 MiB floor: exactly 7 fit."""
    store = FileStore(tmp_path / "data")
    # Free space fixed, so only the in-flight reservations decide (other processes
    # on this machine must not move the numbers).
    monkeypatch.setattr(store, "free_bytes", lambda: 100 * MIB)
    writers, size, floor_mb = 16, 10 * MIB, 25
    start = threading.Barrier(writers)
    tried = threading.Barrier(writers + 1)
    release = threading.Event()
    granted: list[int] = []
    refused: list[DiskFloorError] = []

    def write(index: int) -> None:
        start.wait()
        try:
            with store.reserve(size, floor_mb):
                granted.append(index)
                tried.wait()
                release.wait(10)
        except DiskFloorError as exc:
            refused.append(exc)
            tried.wait()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    tried.wait(10)  # every writer has either a reservation it still holds, or a refusal
    assert len(granted) == 7
    assert len(refused) == writers - 7
    assert store.reserved_bytes == 7 * size
    assert all(exc.reserved_mb == 70 for exc in refused)
    release.set()
    for thread in threads:
        thread.join(10)
    assert store.reserved_bytes == 0
    with store.reserve(size, floor_mb):
        pass
