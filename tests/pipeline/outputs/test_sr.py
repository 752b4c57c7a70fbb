"""The TID 1500 SR: valid in both region forms, volumes equal to the mask to the voxel."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from skimage.draw import polygon2mask

from segnode.pipeline.outputs import codes, volumes_ml
from segnode.pipeline.outputs.provenance import series_description
from segnode.pipeline.outputs.regions import convention_of, region_masks
from segnode.vocabulary import ALL_REGIONS, Region
from tests.pipeline.outputs.dicom_checks import (
    PROVENANCE,
    T1cCase,
    Written,
    dciodvfy,
    unexpected_warnings,
)

TRACKING = {
    Region.WT: "WT whole tumor",
    Region.TC: "TC tumor core",
    Region.ET: "ET enhancing tumor",
    Region.NCR: "NCR necrosis",
    Region.ED: "ED edema",
}
VARIANTS = ["written", "written_segment_form", "written_empty"]


def read_sr(written: Written) -> hd.sr.Comprehensive3DSR:
    (obj,) = written.record.of_kind("sr")
    # The writer's file, re-read from bytes: what a PACS would get.
    return hd.sr.srread(obj.path)


def groups_by_region(sr: hd.sr.Comprehensive3DSR) -> dict[Region, object]:
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = [
        *report.get_volumetric_roi_measurement_groups(),
        *report.get_image_measurement_groups(),
    ]
    by_region = {Region(group.tracking_identifier.split()[0]): group for group in groups}
    assert len(by_region) == len(groups) == 5
    return by_region


def volume_of(group: object) -> tuple[float, str]:
    (measurement,) = group.get_measurements()  # type: ignore[attr-defined]
    assert measurement.name == codes.VOLUME
    return measurement.value, measurement.unit.value


@pytest.mark.parametrize("variant", VARIANTS)
def test_sr_passes_dciodvfy(variant: str, request: pytest.FixtureRequest) -> None:
    written: Written = request.getfixturevalue(variant)
    (obj,) = written.record.of_kind("sr")
    validation = dciodvfy(obj.path)
    assert validation.errors == []
    assert unexpected_warnings(validation) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_sr_volumes_equal_voxel_counts_times_voxel_volume(
    variant: str, request: pytest.FixtureRequest
) -> None:
    written: Written = request.getfixturevalue(variant)
    labels = sitk.GetArrayFromImage(written.labels)
    voxel_ml = float(np.prod(written.labels.GetSpacing())) / 1000.0
    counts = {
        Region.NCR: int((labels == 1).sum()),
        Region.ED: int((labels == 2).sum()),
        Region.ET: int((labels == 4).sum()),
    }
    counts[Region.TC] = counts[Region.NCR] + counts[Region.ET]
    counts[Region.WT] = counts[Region.TC] + counts[Region.ED]
    groups = groups_by_region(read_sr(written))
    for region in ALL_REGIONS:
        value, unit = volume_of(groups[region])
        assert unit == "ml"
        # "To the voxel": closer than a thousandth of one voxel's volume.
        assert abs(value - counts[region] * voxel_ml) < voxel_ml / 1000, region
        assert written.record.statistics[region].voxel_count == counts[region]
    assert volumes_ml(written.labels, 4) == written.record.statistics


def test_groups_are_coded_and_tracked(written: Written) -> None:
    groups = groups_by_region(read_sr(written))
    for region, group in groups.items():
        assert group.tracking_identifier == TRACKING[region]  # type: ignore[attr-defined]
        assert group.finding_type == codes.REGION_CODES[region]  # type: ignore[attr-defined]
        assert group.finding_category == codes.MORPHOLOGICALLY_ALTERED_STRUCTURE  # type: ignore[attr-defined]


def test_outline_form_draws_each_region_on_the_t1c_images(written: Written, t1c: T1cCase) -> None:
    """Every region's closed polylines, filled (even-odd), give back its mask on every slice."""
    masks = region_masks(sitk.GetArrayFromImage(written.labels), convention_of(4))
    uid_to_slice = {ref.sop_instance_uid: z for z, ref in enumerate(t1c.volume.slices)}
    shape = masks[Region.WT].shape
    groups = groups_by_region(read_sr(written))
    for region in ALL_REGIONS:
        group = groups[region]
        assert group.reference_type == pydicom.sr.codedict.codes.DCM.ImageRegion  # type: ignore[attr-defined]
        drawn = np.zeros(shape, dtype=bool)
        for outline in group.roi:  # type: ignore[attr-defined]
            assert outline.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            points = outline.value
            np.testing.assert_array_equal(points[0], points[-1])  # closed
            reference = outline.ContentSequence[0].ReferencedSOPSequence[0]
            assert reference.ReferencedSOPClassUID == pydicom.uid.MRImageStorage
            z = uid_to_slice[reference.ReferencedSOPInstanceUID]
            # SCOORD (column, row), origin at the top-left pixel's corner -> index space.
            rows_columns = np.column_stack([points[:, 1] - 0.5, points[:, 0] - 0.5])
            drawn[z] ^= polygon2mask(shape[1:], rows_columns)
        np.testing.assert_array_equal(drawn, masks[region], err_msg=str(region))


def test_segment_form_references_the_seg_segments(
    written_segment_form: Written, t1c: T1cCase
) -> None:
    (seg,) = written_segment_form.record.of_kind("seg")
    sr = read_sr(written_segment_form)
    groups = groups_by_region(sr)
    for region, number in ((Region.NCR, 1), (Region.ED, 2), (Region.ET, 3)):
        group = groups[region]
        assert group.reference_type == pydicom.sr.codedict.codes.DCM.ReferencedSegment  # type: ignore[attr-defined]
        reference = group.referenced_segment  # type: ignore[attr-defined]
        assert reference.referenced_sop_instance_uid == seg.sop_instance_uid
        assert reference.referenced_segment_numbers == [number]
        assert reference.source_series_for_segmentation.value == t1c.series.series_instance_uid
    # Unions have no segment of their own: they keep their outlines.
    for region in (Region.WT, Region.TC):
        assert groups[region].reference_type == pydicom.sr.codedict.codes.DCM.ImageRegion  # type: ignore[attr-defined]
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg.sop_instance_uid in evidence


def test_zero_volume_regions_are_reported_as_zero_without_outline(
    written_empty: Written, t1c: T1cCase
) -> None:
    report = read_sr(written_empty).content
    assert report.get_volumetric_roi_measurement_groups() == []
    groups = groups_by_region(read_sr(written_empty))
    for region in ALL_REGIONS:
        assert volume_of(groups[region]) == (0.0, "ml")
        sources = groups[region].source_images  # type: ignore[attr-defined]
        assert [s.referenced_sop_instance_uid for s in sources] == [
            ref.sop_instance_uid for ref in t1c.volume.slices
        ]


def test_device_observer_names_the_algorithm_and_model(written: Written) -> None:
    sr = read_sr(written)
    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type == pydicom.sr.codedict.codes.DCM.Device
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
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert [series.SeriesInstanceUID for series in evidence] == [t1c.series.series_instance_uid]
