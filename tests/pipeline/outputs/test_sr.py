"""The TID 1500 SR: valid, two groups per region, volumes equal to the SEG to the voxel."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as dcm_codes
from scipy import ndimage
from skimage.draw import polygon2mask

from segnode.pipeline.outputs import codes, volumes_ml
from segnode.pipeline.outputs.provenance import series_description
from segnode.pipeline.outputs.regions import REGION_NAMES
from segnode.vocabulary import ALL_REGIONS, BASE_REGIONS, Region
from tests.pipeline.outputs.dicom_checks import (
    PROVENANCE,
    T1cCase,
    Written,
    dciodvfy,
    unexpected_warnings,
)
from tests.pipeline.outputs.sr_reading import (
    SEGMENT_NUMBERS,
    comment_of,
    read_sr,
    region_groups,
    seg_masks,
)

VARIANTS = ["written", "written_sr_only", "written_empty"]
TOOL_PREFIX = "Cornerstone3DTools@^0.1.0"


def read_seg(written: Written) -> hd.seg.Segmentation:
    (obj,) = written.record.of_kind("seg")
    return hd.seg.segread(obj.path)


def pixel_area_mm2(t1c: T1cCase) -> float:
    spacing = pydicom.dcmread(t1c.files[0], stop_before_pixels=True).PixelSpacing
    return float(spacing[0]) * float(spacing[1])


def shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sr_passes_dciodvfy(variant: str, request: pytest.FixtureRequest) -> None:
    written: Written = request.getfixturevalue(variant)
    (obj,) = written.record.of_kind("sr")
    validation = dciodvfy(obj.path)
    assert validation.errors == []
    assert unexpected_warnings(validation) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_sr_reads_back_through_highdicom(variant: str, request: pytest.FixtureRequest) -> None:
    """Both of highdicom's readers accept it, and find each region's two groups."""
    written: Written = request.getfixturevalue(variant)
    (obj,) = written.record.of_kind("sr")
    direct = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(obj.path))
    assert isinstance(direct.content, hd.sr.MeasurementReport)
    groups = region_groups(read_sr(written))
    for region in ALL_REGIONS:
        assert groups[region].display.tracking_uid == groups[region].volume.tracking_uid
    assert len({g.display.tracking_uid for g in groups.values()}) == len(ALL_REGIONS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_volumes_equal_the_seg_masks_to_the_voxel(
    variant: str, request: pytest.FixtureRequest, t1c: T1cCase
) -> None:
    written: Written = request.getfixturevalue(variant)
    masks = seg_masks(read_seg(written), t1c)
    voxel_ml = float(np.prod(written.labels.GetSpacing())) / 1000.0
    groups = region_groups(read_sr(written))
    for region in ALL_REGIONS:
        (volume,) = groups[region].volume.get_measurements()
        assert volume.name == codes.VOLUME and volume.unit.value == "ml"
        count = int(masks[region].sum())
        # "To the voxel": closer than a thousandth of one voxel's volume.
        assert abs(volume.value - count * voxel_ml) < voxel_ml / 1000, region
        assert written.record.statistics[region].voxel_count == count
    assert volumes_ml(written.labels, 4) == written.record.statistics


def test_labelled_regions_reference_their_seg_segments(written: Written, t1c: T1cCase) -> None:
    (seg_obj,) = written.record.of_kind("seg")
    seg = read_seg(written)
    sr = read_sr(written)
    groups = region_groups(sr)
    for region in BASE_REGIONS:
        volume = groups[region].volume
        assert isinstance(volume, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)
        assert volume.reference_type == dcm_codes.DCM.ReferencedSegment
        reference = volume.referenced_segment
        assert reference.referenced_sop_instance_uid == seg_obj.sop_instance_uid
        (number,) = reference.referenced_segment_numbers
        assert number == SEGMENT_NUMBERS[region]
        # The segment it names is that region in the SEG itself, not just by our numbering.
        description = seg.get_segment_description(number)
        assert description.segmented_property_type == codes.REGION_CODES[region]
        assert reference.source_series_for_segmentation.value == t1c.series.series_instance_uid
    # Unions have no segment: a TID 1501 group whose source images are the T1c's.
    for region in (Region.WT, Region.TC):
        volume = groups[region].volume
        assert not isinstance(volume, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)
        assert [s.referenced_sop_instance_uid for s in volume.source_images] == [
            ref.sop_instance_uid for ref in t1c.volume.slices
        ]
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg_obj.sop_instance_uid in evidence


def test_each_region_has_one_outline_on_its_largest_slice(written: Written, t1c: T1cCase) -> None:
    """One closed POLYLINE per region: its largest piece, filled, on the slice it is largest."""
    masks = seg_masks(read_seg(written), t1c)
    shape = masks[Region.WT].shape[1:]
    groups = region_groups(read_sr(written))
    for region in ALL_REGIONS:
        (area,) = groups[region].display.get_measurements()
        (outline,) = area.referenced_coordinates
        assert outline.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = outline.value
        np.testing.assert_array_equal(points[0], points[-1])  # closed
        reference = outline.ContentSequence[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPClassUID == pydicom.uid.MRImageStorage
        largest = int(np.argmax(masks[region].sum(axis=(1, 2))))
        expected_ref = t1c.volume.slices[largest]
        assert reference.ReferencedSOPInstanceUID == expected_ref.sop_instance_uid, region
        # SCOORD (column, row), origin at the top-left pixel's corner -> index space.
        drawn = polygon2mask(shape, np.column_stack([points[:, 1] - 0.5, points[:, 0] - 0.5]))
        pieces, count = ndimage.label(masks[region][largest])
        sizes = ndimage.sum(masks[region][largest], pieces, range(1, count + 1))
        piece = ndimage.binary_fill_holes(pieces == 1 + int(np.argmax(sizes)))
        np.testing.assert_array_equal(drawn, piece, err_msg=str(region))
        # The Area is what the outline encloses, in mm² (what a viewer recomputes).
        assert area.name == codes.AREA and area.unit.value == "mm2"
        assert area.value == pytest.approx(shoelace(points) * pixel_area_mm2(t1c), rel=1e-9)


def test_groups_are_named_coded_and_labelled(written: Written) -> None:
    groups = region_groups(read_sr(written))
    for region in ALL_REGIONS:
        for group in (groups[region].display, groups[region].volume):
            assert group.tracking_identifier == (
                f"{TOOL_PREFIX}:PlanarFreehandROI:{REGION_NAMES[region]}"
            )
            assert group.finding_type == codes.REGION_CODES[region]
            assert group.finding_category == codes.MORPHOLOGICALLY_ALTERED_STRUCTURE
        volume_ml = written.record.statistics[region].volume_ml
        assert comment_of(groups[region].display) == f"{REGION_NAMES[region]} {volume_ml:.2f} ml"


def test_empty_regions_are_listed_with_zero_ml_on_a_marked_point(
    written_empty: Written, t1c: T1cCase
) -> None:
    """No voxel: 0 ml everywhere, each display group on its own point in the left margin."""
    (seg_obj,) = written_empty.record.of_kind("seg")
    groups = region_groups(read_sr(written_empty))
    middle = t1c.volume.slices[len(t1c.volume.slices) // 2].sop_instance_uid
    rows = []
    for region in ALL_REGIONS:
        display = groups[region].display
        assert display.tracking_identifier == f"{TOOL_PREFIX}:ArrowAnnotate:{REGION_NAMES[region]}"
        assert comment_of(display) == f"{REGION_NAMES[region]} 0 ml (none segmented)"
        (area,) = display.get_measurements()
        assert area.value == 0
        (point,) = area.referenced_coordinates
        assert point.graphic_type == hd.sr.GraphicTypeValues.POINT
        assert point.name == codes.DISPLAY_ANCHOR
        assert point.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == middle
        ((column, row),) = point.value
        assert column < 0.1 * int(pydicom.dcmread(t1c.files[0], stop_before_pixels=True).Columns)
        rows.append(row)
        (volume,) = groups[region].volume.get_measurements()
        assert (volume.value, volume.unit.value) == (0.0, "ml")
    assert rows == sorted(rows) and len(set(rows)) == len(rows)  # one row each, WT highest
    for region in BASE_REGIONS:  # the SEG still describes the empty segments
        reference = groups[region].volume.referenced_segment  # type: ignore[union-attr]
        assert reference.referenced_sop_instance_uid == seg_obj.sop_instance_uid


def test_device_observer_names_the_algorithm_and_model(written: Written) -> None:
    sr = read_sr(written)
    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type == dcm_codes.DCM.Device
    device = observer.observer_identifying_attributes
    assert device.name == "segnode"
    assert device.manufacturer_name == written.settings.manufacturer
    assert PROVENANCE.model_id in device.model_name
    assert PROVENANCE.model_version in device.model_name
    assert device.uid == PROVENANCE.device_uid


def test_sr_is_filed_in_the_source_study_with_the_configured_series(
    written: Written, t1c: T1cCase
) -> None:
    sr = read_sr(written)
    source = pydicom.dcmread(t1c.files[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID
    assert sr.SeriesNumber == written.settings.sr_series_number
    assert sr.SeriesDescription == series_description(written.settings, "sr")
    assert sr.Manufacturer == written.settings.manufacturer
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    (seg,) = written.record.of_kind("seg")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {series.SeriesInstanceUID for series in evidence} == {
        t1c.series.series_instance_uid,
        seg.series_instance_uid,
    }
