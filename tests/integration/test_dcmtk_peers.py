"""DCMTK clients against the node's listener, with the real scanner data.

DCMTK (echoscu, storescu, dcmconv, dcmcjpeg) is a real independent DICOM
implementation; the node runs in-process with its real listener on loopback.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit
from sqlalchemy import select

from segnode.node.service import Node
from segnode.storage.models import Instance, NodeEvent, Series, Study
from tests.helpers import (
    dcmtk_env,
    free_port,
    require_shared_data,
    require_tool,
    storescu,
    wait_for_port,
)
from tests.integration.dicom_files import dataset_bytes, index_folder

pytestmark = pytest.mark.dcmtk

# storescu proposes uncompressed syntaxes unless told otherwise; these options
# make it propose each file's own transfer syntax so nothing is transcoded.
PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
}


def send_preserving_syntax(port: int, paths: list[Path]) -> None:
    by_syntax: dict[str, list[Path]] = {}
    for path in paths:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_syntax.setdefault(syntax, []).append(path)
    for syntax, group in by_syntax.items():
        result = storescu(port, group, extra=(PROPOSE[syntax],))
        assert result.returncode == 0, result.stderr


def stored_rows(node: Node) -> dict[str, tuple[Instance, str, str]]:
    with node.sessions() as session:
        rows = session.execute(
            select(Instance, Series.series_instance_uid, Study.study_instance_uid)
            .join(Series, Series.id == Instance.series_id)
            .join(Study, Study.id == Series.study_id)
        ).all()
    return {row[0].sop_instance_uid: (row[0], row[1], row[2]) for row in rows}


class BitPreservingStorescp:
    """DCMTK storescp with +B: writes the bytes it received, the reference for "on the wire"."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = subprocess.Popen(
            [require_tool("storescp"), "-aet", "SEGNODE", "+B", "+xa", "-od", str(folder), str(self.port)],
            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def received(self) -> dict[str, bytes]:
        return {path.name.split(".", 1)[1]: path.read_bytes() for path in self.folder.iterdir()}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def test_every_shared_folder_arrives_byte_identical(start, tmp_path: Path) -> None:
    """What storescu puts on the wire is what the node stores, bit for bit.

    DCMTK re-encodes some datasets while sending (Philips and Siemens XA
    undefined-length sequences become defined-length), so the reference for
    "byte-identical" is DCMTK's own bit-preserving storescp receiving the same
    send; files storescu did not re-encode must also equal the source bytes,
    and the others every source element value. The 12-bit folder holds three
    different files with ONE SOP Instance UID: the first is stored and the
    other two must be kept in quarantine, not lost.
    """
    data = require_shared_data()
    node = start()
    reference = BitPreservingStorescp(tmp_path / "storescp")
    folders = sorted(path for path in data.iterdir() if path.is_dir())
    assert len(folders) == 10
    try:
        for folder in folders:
            send_preserving_syntax(node.scp.port, sorted(folder.iterdir()))
            send_preserving_syntax(reference.port, sorted(folder.iterdir()))
    finally:
        reference.stop()
    on_wire = reference.received()
    rows = stored_rows(node)
    identical_to_source = 0
    for folder in folders:
        for sop_uid, source in index_folder(folder).items():
            row, series_uid, study_uid = rows[sop_uid]
            stored = node.store.absolute(row.file_path).read_bytes()
            assert (series_uid, study_uid) == (source.series_instance_uid, source.study_instance_uid)
            assert row.transfer_syntax_uid == source.transfer_syntax_uid
            if folder.name == "siemens_trio_12bit":
                continue  # three versions of one UID: checked below
            assert dataset_bytes(stored) == dataset_bytes(on_wire[sop_uid]), source.path.name
            if dataset_bytes(stored) == dataset_bytes(source.path.read_bytes()):
                identical_to_source += 1
            else:
                assert pydicom.dcmread(node.store.absolute(row.file_path)) == pydicom.dcmread(source.path)
    unique = len({uid for folder in folders for uid in index_folder(folder)})
    assert len(rows) == unique
    assert identical_to_source >= 150 + 35 + 35 + 9 + 1  # GE, Siemens E11 x2, Trio TS, Toshiba

    with node.sessions() as session:
        from segnode.storage.models import QuarantinedInstance

        duplicates = session.execute(select(QuarantinedInstance)).scalars().all()
    assert len(duplicates) == 2
    assert all("duplicate SOP Instance UID" in entry.reason for entry in duplicates)
    twelve_bit = {path.read_bytes() for path in (data / "siemens_trio_12bit").iterdir()}
    kept = {node.store.absolute(rows[duplicates[0].sop_instance_uid][0].file_path).read_bytes()}
    kept |= {(node.store.quarantine_root / entry.file_path).read_bytes() for entry in duplicates}
    assert {dataset_bytes(b) for b in kept} == {dataset_bytes(b) for b in twelve_bit}


def test_raw_sender_files_arrive_byte_identical_to_the_sources(start) -> None:
    """pynetdicom sends a file's dataset bytes without re-encoding: then stored == source."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

    folder = require_shared_data() / "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic"
    node = start()
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)  # the files' own syntax
    association = ae.associate("127.0.0.1", node.scp.port, ae_title="SEGNODE")
    assert association.is_established
    try:
        for path in sorted(folder.iterdir())[:40]:
            status = association.send_c_store(path)
            assert status.Status == 0
    finally:
        association.release()
    rows = stored_rows(node)
    for sop_uid, source in index_folder(folder).items():
        if sop_uid in rows:
            stored = node.store.absolute(rows[sop_uid][0].file_path).read_bytes()
            assert dataset_bytes(stored) == dataset_bytes(source.path.read_bytes())
    assert len(rows) == 40


def test_nine_transfer_syntaxes_decode_to_identical_pixels(start) -> None:
    folder = require_shared_data() / "siemens_trio_transfer_syntaxes"
    node = start()
    send_preserving_syntax(node.scp.port, sorted(folder.iterdir()))
    rows = stored_rows(node)
    assert len({row.transfer_syntax_uid for row, _, _ in rows.values()}) == 7  # 9 files, 7 UIDs
    pixels = [pydicom.dcmread(node.store.absolute(row.file_path)).pixel_array for row, _, _ in rows.values()]
    assert len(pixels) == 9
    for array in pixels[1:]:
        np.testing.assert_array_equal(array, pixels[0])


def test_enhanced_multiframe_is_accepted_whole(start) -> None:
    folder = require_shared_data() / "siemens_prisma_XA30_T1w_tfl_enhanced_multiframe"
    node = start()
    assert storescu(node.scp.port, sorted(folder.iterdir())).returncode == 0
    [(row, _, _)] = stored_rows(node).values()
    stored = pydicom.dcmread(node.store.absolute(row.file_path))
    assert row.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    assert int(stored.NumberOfFrames) == 96
    assert stored.pixel_array.shape == (96, 128, 128)


def test_deflated_and_jpeg_baseline_made_by_dcmtk_are_accepted(start, tmp_path: Path) -> None:
    """Deflate and lossy JPEG are not in the shared data; DCMTK derives them from a real file."""
    sources = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())
    deflated, jpeg = tmp_path / "deflated.dcm", tmp_path / "jpeg.dcm"
    subprocess.run([require_tool("dcmconv"), "+td", str(sources[0]), str(deflated)], check=True)
    subprocess.run([require_tool("dcmcjpeg"), "+eb", "+un", str(sources[1]), str(jpeg)], check=True)
    node = start()
    assert storescu(node.scp.port, [deflated], extra=("-xd",)).returncode == 0
    assert storescu(node.scp.port, [jpeg], extra=("-xy",)).returncode == 0
    rows = stored_rows(node)
    syntaxes = {row.transfer_syntax_uid for row, _, _ in rows.values()}
    assert syntaxes == {DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit}
    originals = {str(pydicom.dcmread(path).SOPInstanceUID): pydicom.dcmread(path).pixel_array for path in sources[:2]}
    for sop_uid, (row, _, _) in rows.items():
        decoded = pydicom.dcmread(node.store.absolute(row.file_path)).pixel_array
        assert decoded.shape == originals[sop_uid].shape
    deflated_row = next(row for row, _, _ in rows.values() if row.transfer_syntax_uid == DeflatedExplicitVRLittleEndian)
    assert dataset_bytes(node.store.absolute(deflated_row.file_path).read_bytes()) == dataset_bytes(deflated.read_bytes())


def test_wrong_called_ae_is_rejected_and_recorded(start) -> None:
    node = start()
    result = subprocess.run(
        [require_tool("echoscu"), "-aec", "NOT_SEGNODE", "-aet", "STRANGER", "127.0.0.1", str(node.scp.port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    with node.sessions() as session:
        event = session.execute(select(NodeEvent).where(NodeEvent.kind == "association_rejected")).scalar_one()
    assert "called AE title 'NOT_SEGNODE'" in event.detail["reason"]


def test_unknown_calling_ae_is_rejected_when_restricted(start) -> None:
    node = start(
        listener={"restrict_calling_ae": True},
        peers=[{"name": "pacs", "ae_title": "KNOWNPACS", "host": "127.0.0.1"}],
    )
    unknown = subprocess.run(
        [require_tool("echoscu"), "-aec", "SEGNODE", "-aet", "STRANGER", "127.0.0.1", str(node.scp.port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )
    assert unknown.returncode != 0 and "Calling AE Title Not Recognized" in unknown.stderr
    known = subprocess.run(
        [require_tool("echoscu"), "-aec", "SEGNODE", "-aet", "KNOWNPACS", "127.0.0.1", str(node.scp.port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )
    assert known.returncode == 0, known.stderr


def test_bad_instance_fails_while_the_rest_of_the_association_is_stored(start, tmp_path: Path) -> None:
    """storescu sends [good, bad, good] in one association; the bad one lacks its
    SeriesInstanceUID (derived from a real file: no real malformed data exists)."""
    files = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())
    bad = tmp_path / "b_bad.dcm"
    dataset = pydicom.dcmread(files[1])
    del dataset.SeriesInstanceUID
    dataset.save_as(bad)
    node = start()
    # -nh: go on after a failed store, as a PACS pushing a study does.
    result = storescu(node.scp.port, [files[0], bad, files[2]], extra=("-nh", "-v"))
    responses = [line for line in result.stderr.splitlines() if "Received Store Response" in line]
    assert responses == [
        "I: Received Store Response (Success)",
        "I: Received Store Response (Error: CannotUnderstand)",
        "I: Received Store Response (Success)",
    ], result.stderr
    rows = stored_rows(node)
    assert len(rows) == 2
    with node.sessions() as session:
        from segnode.storage.models import QuarantinedInstance

        [kept] = session.execute(select(QuarantinedInstance)).scalars().all()
    assert kept.reason == "SeriesInstanceUID is missing" and kept.status_code == 0xC210
    assert (node.store.quarantine_root / kept.file_path).is_file()
    echo = subprocess.run([require_tool("echoscu"), "-aec", "SEGNODE", "127.0.0.1", str(node.scp.port)],
                          env=dcmtk_env(), timeout=30)
    assert echo.returncode == 0  # the listener keeps serving


def test_four_concurrent_senders_lose_and_mix_nothing(start) -> None:
    data = require_shared_data()
    folders = [data / name for name in (
        "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic",
        "ge_mr750_3T_axial_EPI_human",
        "siemens_prisma_E11_t1_fl2d_sag_HFS",
        "siemens_prisma_E11_t1_fl2d_sag_HFDL",
    )]
    node = start()
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def send(folder: Path) -> None:
        results[folder.name] = storescu(node.scp.port, sorted(folder.iterdir()), calling=f"SCU{len(folder.name)}")

    threads = [threading.Thread(target=send, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result.returncode == 0 for result in results.values()), results
    rows = stored_rows(node)
    assert len(rows) == 170 + 150 + 35 + 35
    for folder in folders:
        for sop_uid, source in index_folder(folder).items():
            row, series_uid, study_uid = rows[sop_uid]
            assert (series_uid, study_uid) == (source.series_instance_uid, source.study_instance_uid)
            # storescu re-encodes Philips sequences (see the byte-identity test): compare values.
            assert pydicom.dcmread(node.store.absolute(row.file_path)) == pydicom.dcmread(source.path)
    with node.sessions() as session:
        counts = dict(session.execute(select(Study.study_instance_uid, Study.received_instances)).all())
    assert sorted(counts.values()) == [35, 35, 150, 170]


def test_disk_floor_answers_out_of_resources_on_the_wire(start) -> None:
    files = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())[:2]
    node = start(storage={"min_free_disk_mb": 10**12})  # a floor no disk reaches
    result = storescu(node.scp.port, files, extra=("-nh", "-v"))
    responses = [line for line in result.stderr.splitlines() if "Received Store Response" in line]
    assert responses == ["I: Received Store Response (Refused: OutOfResources)"] * 2, result.stderr
    assert stored_rows(node) == {}
    assert list(node.store.store_root.iterdir()) == []


def test_association_limit_rejects_the_next_peer_transiently(start) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    node = start(listener={"max_associations": 1})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", node.scp.port, ae_title="SEGNODE")
    assert held.is_established
    try:
        result = subprocess.run(
            [require_tool("echoscu"), "-aec", "SEGNODE", "127.0.0.1", str(node.scp.port)],
            capture_output=True, text=True, env=dcmtk_env(), timeout=30,
        )
        assert result.returncode != 0
        assert "Local Limit Exceeded" in result.stderr or "local-limit-exceeded" in result.stderr.lower(), result.stderr
    finally:
        held.release()
    after = subprocess.run([require_tool("echoscu"), "-aec", "SEGNODE", "127.0.0.1", str(node.scp.port)],
                           env=dcmtk_env(), timeout=30)
    assert after.returncode == 0
