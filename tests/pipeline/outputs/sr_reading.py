"""Reading a written SR back as a reader would: its two groups per region, the SEG's masks."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from numpy.typing import NDArray

from segnode.pipeline.outputs import codes
from segnode.vocabulary import ALL_REGIONS, REGION_PARTS, Region
from tests.pipeline.outputs.dicom_checks import T1cCase, Written

#: SEG segment number of each labelled region (seg.py numbers them in label order).
SEGMENT_NUMBERS = {Region.NCR: 1, Region.ED: 2, Region.ET: 3}
REGION_OF_CODE = {code: region for region, code in codes.REGION_CODES.items()}

DisplayGroup = hd.sr.MeasurementsAndQualitativeEvaluations
VolumeGroup = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class RegionGroups:
    """One region's display group (what a viewer lists) and volume group."""

    display: DisplayGroup
    volume: VolumeGroup


def read_sr(written: Written) -> hd.sr.Comprehensive3DSR:
    (obj,) = written.record.of_kind("sr")
    # The writer's file, re-read from bytes: what a PACS would get.
    return hd.sr.srread(obj.path)


def measurement_groups(sr: hd.sr.Comprehensive3DSR) -> list[hd.sr.ContainerContentItem]:
    """The report's measurement groups in document order (what OHIF iterates)."""
    (imaging,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    ]
    return list(imaging.ContentSequence)


def region_groups(sr: hd.sr.Comprehensive3DSR) -> dict[Region, RegionGroups]:
    """Both groups of every region, found by tracking UID and told apart by their NUM."""
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    by_region: dict[Region, dict[str, object]] = {}
    groups = [
        *report.get_image_measurement_groups(),
        *report.get_volumetric_roi_measurement_groups(),
    ]
    assert len(groups) == 2 * len(ALL_REGIONS)
    for group in groups:
        region = REGION_OF_CODE[group.finding_type]
        (measurement,) = group.get_measurements()
        kind = "display" if measurement.name == codes.AREA else "volume"
        assert kind not in by_region.setdefault(region, {}), (region, kind)
        by_region[region][kind] = group
    result = {}
    for region, pair in by_region.items():
        display, volume = pair["display"], pair["volume"]
        assert isinstance(display, hd.sr.MeasurementsAndQualitativeEvaluations)
        assert isinstance(
            volume,
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
            | hd.sr.MeasurementsAndQualitativeEvaluations,
        )
        result[region] = RegionGroups(display, volume)
    assert set(result) == set(ALL_REGIONS)
    return result


def comment_of(group: DisplayGroup) -> str:
    (text,) = [
        item.TextValue
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    return str(text)


def seg_masks(seg: hd.seg.Segmentation, t1c: T1cCase) -> dict[Region, NDArray[np.bool_]]:
    """The SEG's segments as (slice, row, column) masks, WT and TC as their unions."""
    uids = [ref.sop_instance_uid for ref in t1c.volume.slices]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2, 3]
    )
    base = {region: pixels[..., number - 1] > 0 for region, number in SEGMENT_NUMBERS.items()}
    return {
        region: np.logical_or.reduce([base[part] for part in REGION_PARTS[region]])
        for region in ALL_REGIONS
    }
