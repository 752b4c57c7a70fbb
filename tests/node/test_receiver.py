"""The C-STORE contract without the network: store, dedupe, quarantine, refuse.

Real scanner files from ../shared/data; the corrupt variants are made from them
(truncated bytes, a mismatching UID) because no real corrupt data exists.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from segnode.node.receiving.receiver import InstanceReceiver, Sender
from segnode.node.service import open_storage
from segnode.storage.models import Instance, NodeEvent, QuarantinedInstance, Study
from tests.helpers import require_shared_data

SENDER = Sender(association_id=None, calling_ae="PACS", called_ae="SEGNODE")


def _files(folder: str) -> list[Path]:
    return sorted((require_shared_data() / folder).iterdir())


def _send(receiver: InstanceReceiver, data: bytes) -> int:
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
    return receiver.receive(
        data,
        command_sop_class_uid=str(dataset.SOPClassUID),
        command_sop_instance_uid=str(dataset.SOPInstanceUID),
        sender=SENDER,
    ).status


def test_stores_bytes_exactly_and_records_the_row(receiver_for) -> None:
    receiver, sessions, store = receiver_for()
    source = _files("siemens_prisma_E11_t1_fl2d_sag_HFS")[0]
    data = source.read_bytes()
    assert _send(receiver, data) == 0
    with sessions() as session:
        row = session.execute(select(Instance)).scalar_one()
    assert store.absolute(row.file_path).read_bytes() == data
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.size_bytes == len(data)


def test_identical_resend_is_acknowledged_once(receiver_for) -> None:
    receiver, sessions, _ = receiver_for()
    data = _files("siemens_prisma_E11_t1_fl2d_sag_HFS")[0].read_bytes()
    assert _send(receiver, data) == 0
    assert _send(receiver, data) == 0
    with sessions() as session:
        assert len(session.execute(select(Instance)).all()) == 1
        assert session.execute(select(Study.received_instances)).scalar_one() == 1


def _altered(data: bytes) -> bytes:
    """The same SOP instance with a different SeriesDescription (a re-sent, edited instance)."""
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    dataset.SeriesDescription = "edited at the PACS"
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("policy", "kept"), [("keep_first", "original"), ("keep_newest", "edited")])
def test_different_duplicate_follows_policy_and_keeps_both(receiver_for, policy: str, kept: str) -> None:
    receiver, sessions, store = receiver_for(duplicates=policy)
    original = _files("siemens_prisma_E11_t1_fl2d_sag_HFS")[0].read_bytes()
    edited = _altered(original)
    assert _send(receiver, original) == 0
    assert _send(receiver, edited) == 0
    with sessions() as session:
        row = session.execute(select(Instance)).scalar_one()
        quarantined = session.execute(select(QuarantinedInstance)).scalar_one()
    stored = store.absolute(row.file_path).read_bytes()
    other = store.quarantine_root / quarantined.file_path
    expected_stored, expected_other = (original, edited) if kept == "original" else (edited, original)
    assert stored == expected_stored
    assert other.read_bytes() == expected_other
    assert row.sha256 == hashlib.sha256(expected_stored).hexdigest()
    note = json.loads(other.with_suffix(".json").read_text())
    assert "SOP Instance UID" in note["reason"]


def test_truncated_instance_is_refused_and_quarantined(receiver_for) -> None:
    receiver, sessions, store = receiver_for()
    data = _files("siemens_prisma_E11_t1_fl2d_sag_HFS")[0].read_bytes()
    truncated = data[: len(data) - 5000]
    status = _send(receiver, truncated)
    assert status == 0xC210
    with sessions() as session:
        row = session.execute(select(QuarantinedInstance)).scalar_one()
        assert session.execute(select(Instance)).first() is None
    assert "runs past the end" in row.reason
    assert (store.quarantine_root / row.file_path).read_bytes() == truncated
    assert row.status_code == 0xC210


def test_garbage_bytes_get_cannot_understand(receiver_for) -> None:
    receiver, sessions, store = receiver_for()
    outcome = receiver.receive(
        b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 10,
        command_sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        command_sop_instance_uid="1.2.3.4",
        sender=SENDER,
    )
    assert outcome.status == 0xC210
    # pydicom reads leniently; either way the reason must say what is wrong.
    assert "not a readable DICOM dataset" in outcome.reason or "is missing" in outcome.reason
    assert len(list(store.quarantine_root.rglob("*.dcm"))) == 1


def test_sop_class_mismatch_gets_a900(receiver_for) -> None:
    receiver, _, _ = receiver_for()
    data = _files("siemens_prisma_E11_t1_fl2d_sag_HFS")[0].read_bytes()
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
    outcome = receiver.receive(
        data,
        command_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        command_sop_instance_uid=str(dataset.SOPInstanceUID),
        sender=SENDER,
    )
    assert outcome.status == 0xA900


def test_disk_floor_refuses_with_out_of_resources_and_touches_nothing(receiver_for) -> None:
    receiver, sessions, store = receiver_for()
    files = _files("siemens_prisma_E11_t1_fl2d_sag_HFS")
    assert _send(receiver, files[0].read_bytes()) == 0
    before = {p: p.read_bytes() for p in store.store_root.rglob("*.dcm")}

    floor_mb = int(store.free_mb()) + 10_000_000  # far above what any disk has free
    full, _, _ = receiver_for(min_free_disk_mb=floor_mb)
    full._store = store  # same data dir, new floor  # noqa: SLF001
    full._sessions = sessions  # noqa: SLF001
    assert _send(full, files[1].read_bytes()) == 0xA700
    assert _send(full, files[2].read_bytes()) == 0xA700
    assert {p: p.read_bytes() for p in store.store_root.rglob("*.dcm")} == before
    with sessions() as session:
        events = session.execute(select(NodeEvent.kind)).scalars().all()
    assert events.count("disk_low") == 1  # logged once per episode, not per instance


def _identity_variants() -> tuple[bytes, bytes, bytes]:
    """A real instance; one of another patient in the same study; one reusing its series in
    another study (made from the real file by changing those elements only)."""
    from tests.fixtures.malformed import element, load_base

    folder = require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS"
    first, second, third = sorted(folder.iterdir())[:3]
    original = load_base(first)
    other_patient = load_base(second)
    other_patient_body = other_patient.replaced(
        0x00100020, element(0x0010, 0x0020, "LO", b"ANOTHER-PATIENT")
    )
    other_study = load_base(third)
    other_study_body = other_study.replaced(
        0x0020000D, element(0x0020, 0x000D, "UI", b"1.2.826.0.1.3680043.8.498.777")
    )
    return (
        original.file(),
        other_patient.file(other_patient_body),
        other_study.file(other_study_body),
    )


def test_another_patients_instance_never_joins_a_study(receiver_for) -> None:
    receiver, sessions, store = receiver_for()
    original, other_patient, other_study = _identity_variants()
    assert _send(receiver, original) == 0
    assert _send(receiver, other_patient) == 0xC212
    assert _send(receiver, other_study) == 0xC212
    with sessions() as session:
        assert len(session.execute(select(Instance)).all()) == 1
        assert len(session.execute(select(Study)).all()) == 1
        reasons = sorted(session.execute(select(QuarantinedInstance.reason)).scalars())
        kinds = session.execute(
            select(NodeEvent.kind).where(NodeEvent.kind == "identity_conflict")
        ).scalars().all()
    assert reasons == [
        "Series Instance UID already recorded under another study",
        "Study Instance UID already recorded for another patient",
    ]
    assert len(kinds) == 2
    # Nothing of the refused instances under store/: one file, the original.
    assert len([path for path in store.store_root.rglob("*.dcm")]) == 1


def test_a_refusal_on_a_full_disk_still_leaves_its_row(tmp_path: Path, make_settings) -> None:
    """A real ENOSPC (a tmpfs data dir whose inodes are used up, the database elsewhere): the
    quarantine copy cannot be written, nothing is left in tmp/, the row and event still say
    what happened. (Bytes are plentiful, so the disk-floor reservation lets the write try.)"""
    import subprocess


    data_dir = tmp_path / "tiny"
    data_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=64", "tmpfs", str(data_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"TMPFS MOUNT NOT PERMITTED (quarantine ENOSPC test skipped): {mounted.stderr.strip()}")
    try:
        settings = make_settings(storage={
            "data_dir": str(data_dir), "min_free_disk_mb": 0,
            "database_url": f"sqlite:///{tmp_path / 'segnode.db'}",
        })
        _engine, sessions, store = open_storage(settings)
        receiver = InstanceReceiver(store, sessions, settings.storage)
        source = _files("siemens_prisma_E11_t1_fl2d_sag_HFS")[0].read_bytes()
        fillers = data_dir / "fillers"
        fillers.mkdir()
        with pytest.raises(OSError, match="No space left"):
            for number in range(1000):
                (fillers / str(number)).touch()
        truncated = source[:-100]
        outcome = receiver.receive(truncated, command_sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                                   command_sop_instance_uid="1.2.3.4", sender=SENDER)
        assert outcome.status == 0xC210
        with sessions() as session:
            row = session.execute(select(QuarantinedInstance)).scalar_one()
            kinds = session.execute(select(NodeEvent.kind)).scalars().all()
        assert row.file_path is None and "quarantine copy not kept" in row.reason
        assert "instance_quarantined" in kinds
        assert list(store.tmp_root.iterdir()) == []
    finally:
        subprocess.run(["umount", str(data_dir)], check=True)
