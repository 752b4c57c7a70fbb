"""Result delivery against real peers: Orthanc (C-STORE and DICOMweb STOW-RS) and DCMTK storescp.

The SEG and SR are synthetic, built here with highdicom over a real MR series
from ../shared/data: the node's own SEG/SR writers are not part of this change,
and no real SEG/SR exists in the shared data. What matters is that they carry
the Segmentation and Comprehensive 3D SR SOP classes, which DCMTK's storescu
only sends with -R, so a sender that proposes the usual storage contexts fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from segnode.config.destinations import DimseDestination, StowDestination
from segnode.node.delivery.dispatch import (
    PermanentDeliveryError,
    TransientDeliveryError,
    send_files,
)
from tests.dcmtk_peers import Storescp
from tests.helpers import free_port, require_shared_data
from tests.integration.dicom_files import dataset_bytes
from tests.orthanc import Orthanc

MR_FOLDER = "siemens_prisma_E11_t1_fl2d_sag_HFS"
SYNTAXES_FOLDER = "siemens_trio_transfer_syntaxes"  # one MR image in 9 transfer syntaxes


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A BINARY SEG (a 4-slice box) and a TID 1500 SR referencing it, over the real MR series."""
    folder = require_shared_data() / MR_FOLDER
    sources = sorted((pydicom.dcmread(path) for path in folder.iterdir()), key=lambda ds: int(ds.InstanceNumber))
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=bool)
    mask[15:19, 100:140, 100:140] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name="segnode-test", version="0", family=codes.cid7162.ArtificialIntelligence
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="box", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type="BINARY", segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=9901, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="segnode", manufacturer_model_name="test", software_versions="0", device_serial_number="0",
    )
    measurements = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="box"),
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=123.0, unit=codes.UCUM.CubicMillimeter)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(), procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[measurements],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg], content=report, series_instance_uid=hd.UID(), series_number=9902,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="segnode",
    )
    out = tmp_path_factory.mktemp("results")
    seg.save_as(out / "seg.dcm")
    sr.save_as(out / "sr.dcm")
    return [out / "seg.dcm", out / "sr.dcm"]


def _mr_files(count: int) -> list[Path]:
    return sorted((require_shared_data() / MR_FOLDER).iterdir())[:count]


def _syntax_files() -> list[Path]:
    return sorted((require_shared_data() / SYNTAXES_FOLDER).iterdir())


def _values_without_group_lengths(data: bytes | Path) -> pydicom.Dataset:
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data) if isinstance(data, bytes) else data)
    for element in list(dataset):
        if element.tag.element == 0:
            del dataset[element.tag]
    return dataset


# --- Orthanc, C-STORE -------------------------------------------------------------------


def _dimse(orthanc: Orthanc, **changes: object) -> DimseDestination:
    values: dict[str, object] = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                 "port": orthanc.dicom_port, "calling_ae": "SEGNODE", "timeout_s": 5}
    return DimseDestination.model_validate({**values, **changes})


def _pacs(folder: Path) -> Orthanc:
    """Orthanc with DICOMweb, knowing SEGNODE (the port is for its own C-STOREs, unused here)."""
    return Orthanc(folder, modalities={"segnode": ["SEGNODE", "127.0.0.1", free_port()]}, dicomweb=True).start()


@pytest.fixture(scope="module")
def shared_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the module: it starts in ~0.3 s but takes ~3.5 s to stop cleanly."""
    server = _pacs(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture
def orthanc(shared_orthanc: Orthanc) -> Orthanc:
    """The module's Orthanc, emptied of instances."""
    shared_orthanc.clear()
    return shared_orthanc


@pytest.mark.orthanc
def test_seg_sr_and_every_transfer_syntax_reach_orthanc_unchanged(orthanc: Orthanc, results: list[Path]) -> None:
    files = [*results, *_syntax_files(), *_mr_files(3)]
    receipt = send_files(_dimse(orthanc), files)
    assert receipt.sop_instance_uids == tuple(_sop_uid(path) for path in files)
    assert set(receipt.statuses.values()) == {0x0000}
    for path in files:
        stored = orthanc.instance_file(_sop_uid(path))
        assert stored is not None, path.name
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored)).file_meta.TransferSyntaxUID == \
            pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID  # nothing transcoded
        assert _values_without_group_lengths(stored) == _values_without_group_lengths(path), path.name
    for path in results:  # pydicom-written files: Orthanc keeps exactly the bytes we sent
        assert dataset_bytes(orthanc.instance_file(_sop_uid(path)) or b"") == dataset_bytes(path.read_bytes())


@pytest.mark.orthanc
def test_unknown_calling_ae_is_aborted_by_orthanc_and_delivers_once_registered(
    orthanc: Orthanc, results: list[Path]
) -> None:
    """Orthanc 1.10.1 (DicomAlwaysAllowStore false) ACCEPTS the association of an unknown
    calling AE and answers the first C-STORE-RQ with an A-ABORT (its log: "Rejected Store
    request"). On the wire that is an abort, so the error is transient, and it names the
    likely cause; registering the AE in Orthanc makes the next attempt succeed."""
    destination = _dimse(orthanc, calling_ae="STRANGER")
    with pytest.raises(TransientDeliveryError) as caught:
        send_files(destination, results)
    message = str(caught.value)
    assert caught.value.cause == "association-aborted"
    assert "aborted the association" in message and "calling AE title 'STRANGER'" in message
    assert caught.value.delivered == ()
    assert orthanc.instance_file(_sop_uid(results[0])) is None

    orthanc.put("/modalities/stranger", {"AET": "STRANGER", "Host": "127.0.0.1", "Port": free_port()})
    receipt = send_files(destination, results)
    assert len(receipt.sop_instance_uids) == 2
    assert all(orthanc.instance_file(uid) is not None for uid in receipt.sop_instance_uids)


@pytest.mark.orthanc
def test_wrong_called_ae_is_rejected_permanently(orthanc: Orthanc, results: list[Path]) -> None:
    with pytest.raises(PermanentDeliveryError, match="called AE title 'NOT_ORTHANC' not recognised") as caught:
        send_files(_dimse(orthanc, ae_title="NOT_ORTHANC"), results)
    assert caught.value.cause == "association-rejected"


# --- Orthanc, DICOMweb STOW-RS (orthanc-dicomweb plugin) --------------------------------


def _stow(url: str) -> StowDestination:
    return StowDestination(name="web", url=url, timeout_s=10)


@pytest.mark.orthanc
def test_stow_rs_stores_seg_sr_and_mr_byte_for_byte(orthanc: Orthanc, results: list[Path]) -> None:
    files = [*results, *_syntax_files()[-1:], *_mr_files(2)]
    receipt = send_files(_stow(orthanc.stow_url), files)
    assert receipt.sop_instance_uids == tuple(_sop_uid(path) for path in files)
    assert set(receipt.statuses.values()) == {0x0000}
    for path in files:
        stored = orthanc.instance_file(_sop_uid(path))
        assert stored is not None and dataset_bytes(stored) == dataset_bytes(path.read_bytes()), path.name


@pytest.mark.orthanc
def test_stow_rs_wrong_path_is_permanent_404(orthanc: Orthanc, results: list[Path]) -> None:
    with pytest.raises(PermanentDeliveryError, match="HTTP 404") as caught:
        send_files(_stow(orthanc.url("/dicom-web/stud1es")), results)
    assert caught.value.cause == "http-status"


@pytest.mark.orthanc
def test_stow_rs_failed_sops_are_permanent_and_named(orthanc: Orthanc, results: list[Path]) -> None:
    """STOW to a study URL the instances do not belong to: orthanc-dicomweb 1.7 answers
    HTTP 409 with a FailedSOPSequence (FailureReason 0x0110)."""
    with pytest.raises(PermanentDeliveryError) as caught:
        send_files(_stow(orthanc.url("/dicom-web/studies/1.2.3.4")), results)
    assert caught.value.cause == "stow-failed-sop"
    message = str(caught.value)
    assert "HTTP 409" in message and "refused 2 of 2" in message and "0x0110 Processing Failure" in message
    assert all(_sop_uid(path) in message for path in results)
    assert orthanc.instance_file(_sop_uid(results[0])) is None


@pytest.mark.orthanc
def test_crashed_orthanc_is_transient_and_after_restart_both_protocols_deliver(
    tmp_path: Path, results: list[Path]
) -> None:
    pacs = _pacs(tmp_path / "orthanc")
    try:
        pacs.kill()
        for destination in (_dimse(pacs), _stow(pacs.stow_url)):
            with pytest.raises(TransientDeliveryError, match="Connection refused") as caught:
                send_files(destination, results)
            assert caught.value.cause == "connection-failed"
        pacs.start()
        send_files(_dimse(pacs), results[:1])
        send_files(_stow(pacs.stow_url), results[1:])
        assert all(pacs.instance_file(_sop_uid(path)) is not None for path in results)
    finally:
        pacs.kill()


# --- DCMTK storescp ----------------------------------------------------------------------

MR_ONLY_PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[MROnly]
PresentationContext1 = MRImageStorage\\Uncompressed

[[Profiles]]
[MROnly]
PresentationContexts = MROnly
"""


@pytest.mark.dcmtk
def test_storescp_receives_the_files_exactly_as_they_are(storescp: Callable[..., Storescp], results: list[Path]) -> None:
    peer = storescp("+B", "+xa")  # +B: writes the dataset bytes as received; +xa: every syntax
    files = [*results, *_syntax_files(), *_mr_files(3)]
    receipt = send_files(peer.destination(), files)
    received = peer.received()
    assert set(received) == set(receipt.sop_instance_uids) == {_sop_uid(path) for path in files}
    for path in files:
        on_wire = received[_sop_uid(path)]
        assert dataset_bytes(on_wire) == dataset_bytes(path.read_bytes()), path.name
        source = pydicom.dcmread(path)
        if "PixelData" in source:
            assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(on_wire)).PixelData == source.PixelData


@pytest.mark.dcmtk
def test_storescp_without_seg_and_sr_classes_is_permanent_and_gets_nothing(
    storescp: Callable[..., Storescp], results: list[Path], tmp_path: Path
) -> None:
    profile = tmp_path / "mr_only.cfg"
    profile.write_text(MR_ONLY_PROFILE)
    peer = storescp("-xf", str(profile), "MROnly")
    with pytest.raises(PermanentDeliveryError, match="no presentation context") as caught:
        send_files(peer.destination(), [*_mr_files(2), *results])
    assert "Segmentation Storage" in str(caught.value) and "Comprehensive 3D SR Storage" in str(caught.value)
    assert caught.value.cause == "no-presentation-context"
    with pytest.raises(PermanentDeliveryError, match="accepted no presentation context at all: Segmentation Storage in Explicit VR Little Endian"):
        send_files(peer.destination(), results)  # nothing acceptable at all: pynetdicom aborts
    assert peer.received() == {}


@pytest.mark.dcmtk
def test_compressed_file_is_not_transcoded_for_an_uncompressed_only_peer(
    storescp: Callable[..., Storescp], tmp_path: Path
) -> None:
    profile = tmp_path / "mr_only.cfg"
    profile.write_text(MR_ONLY_PROFILE)
    peer = storescp("-xf", str(profile), "MROnly")
    jpeg2000 = next(path for path in _syntax_files()
                    if pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90")
    with pytest.raises(PermanentDeliveryError, match="MR Image Storage in JPEG 2000 Image Compression"):
        send_files(peer.destination(), [jpeg2000])
    assert peer.received() == {}


@pytest.mark.dcmtk
def test_peer_silent_past_the_timeout_is_transient(storescp: Callable[..., Storescp]) -> None:
    peer = storescp("--sleep-during", "3")
    with pytest.raises(TransientDeliveryError, match="no response within the 1 s timeout") as caught:
        send_files(peer.destination(timeout_s=1), _mr_files(2))
    assert caught.value.cause == "association-aborted"


@pytest.mark.dcmtk
def test_peer_abort_mid_association_is_transient(storescp: Callable[..., Storescp]) -> None:
    peer = storescp("--abort-after")
    with pytest.raises(TransientDeliveryError, match="aborted the association") as caught:
        send_files(peer.destination(), _mr_files(2))
    assert caught.value.delivered == ()
