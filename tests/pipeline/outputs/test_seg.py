"""The DICOM-SEG: valid, in the source study and geometry, the input mask voxel for voxel."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segnode.pipeline.outputs import codes
from segnode.pipeline.outputs.provenance import series_description
from tests.pipeline.outputs.dicom_checks import (
    PROVENANCE,
    T1cCase,
    Written,
    dciodvfy,
    unexpected_warnings,
)

#: SEG segment number -> label value (BraTS 2017-2021: ET is 4).
SEGMENT_TO_LABEL = {1: 1, 2: 2, 3: 4}


def read_seg(written: Written) -> hd.seg.Segmentation:
    (obj,) = written.record.of_kind("seg")
    return hd.seg.segread(obj.path)


def decoded_labels(seg: hd.seg.Segmentation, t1c: T1cCase) -> np.ndarray:
    """The SEG as a label map in volume order, read per source instance (highdicom)."""
    uids = [ref.sop_instance_uid for ref in t1c.volume.slices]
    segments = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2, 3]
    )
    result = np.zeros(segments.shape[:3], dtype=np.uint8)
    for index, number in enumerate([1, 2, 3]):
        result[segments[..., index] > 0] = SEGMENT_TO_LABEL[number]
    return result


@pytest.mark.parametrize("variant", ["written", "written_empty", "written_sr_only"])
def test_seg_passes_dciodvfy(variant: str, request: pytest.FixtureRequest) -> None:
    written: Written = request.getfixturevalue(variant)
    (obj,) = written.record.of_kind("seg")
    validation = dciodvfy(obj.path)
    assert validation.errors == []
    assert unexpected_warnings(validation) == []


def test_seg_mask_equals_the_input_labels_voxel_for_voxel(written: Written, t1c: T1cCase) -> None:
    expected = sitk.GetArrayFromImage(written.labels)
    np.testing.assert_array_equal(decoded_labels(read_seg(written), t1c), expected)


def test_seg_frames_lie_on_their_source_images(written: Written, t1c: T1cCase) -> None:
    seg = read_seg(written)
    position = {ref.sop_instance_uid: ref.position_mm for ref in t1c.volume.slices}
    expected = sitk.GetArrayFromImage(written.labels)
    slice_of = {ref.sop_instance_uid: z for z, ref in enumerate(t1c.volume.slices)}
    assert seg.NumberOfFrames > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        uid = source.ReferencedSOPInstanceUID
        assert source.ReferencedSOPClassUID == pydicom.uid.MRImageStorage
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            position[uid],
            atol=1e-3,
        )
        segment = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        # Empty frames are omitted: each frame present holds some of its segment.
        assert (expected[slice_of[uid]] == SEGMENT_TO_LABEL[segment]).any()
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == t1c.series.series_instance_uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(
        position
    )


def test_seg_segments_are_coded_and_identify_the_algorithm(written: Written) -> None:
    seg = read_seg(written)
    assert seg.SegmentationType == "BINARY"
    expected = [
        (1, codes.NECROSIS, "NCR"),
        (2, codes.EDEMA, "ED"),
        (3, codes.ENHANCING_TUMOUR, "ET"),
    ]
    assert len(seg.SegmentSequence) == 3
    for item, (number, property_type, abbreviation) in zip(
        seg.SegmentSequence, expected, strict=True
    ):
        assert item.SegmentNumber == number
        assert f"({abbreviation})" in item.SegmentLabel
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == (
            property_type.value,
            property_type.scheme_designator,
        )
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "segnode"
        assert algorithm.AlgorithmVersion == PROVENANCE.version_label
        assert PROVENANCE.model_id in algorithm.AlgorithmVersion
        assert PROVENANCE.model_sha256[:12] in algorithm.AlgorithmVersion
        assert PROVENANCE.model_sha256 in algorithm.AlgorithmParameters
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"


def test_seg_is_filed_in_the_source_study_with_the_configured_series(
    written: Written, t1c: T1cCase
) -> None:
    seg = read_seg(written)
    source = pydicom.dcmread(t1c.files[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
    ):
        assert seg.get(keyword) == source.get(keyword), keyword
    assert seg.SeriesNumber == written.settings.seg_series_number
    assert (
        seg.SeriesDescription == series_description(written.settings, "seg")
    )
    assert seg.SeriesDescription.endswith("- not for clinical use")
    assert seg.Manufacturer == written.settings.manufacturer
    assert seg.ContentDescription == "NOT FOR CLINICAL USE"
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID


def test_empty_result_is_a_valid_seg_with_all_segments_described(
    written_empty: Written, t1c: T1cCase
) -> None:
    seg = read_seg(written_empty)
    assert [item.SegmentNumber for item in seg.SegmentSequence] == [1, 2, 3]
    assert not decoded_labels(seg, t1c).any()
