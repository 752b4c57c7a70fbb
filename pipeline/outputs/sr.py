"""The TID 1500 Measurement Report: WT, TC, ET, NCR and ED, their volumes, the quality flags.

Why this shape (the reasons, with OHIF's functions, are in docs/ohif-sr-notes.md):

Each region gets two measurement groups that share one Tracking Unique Identifier
(the same finding, described twice), WT first, then TC, ET, NCR, ED:

- The **volume group** carries the volume (SCT "Volume", UCUM "ml") for every
  reader of volumetric results (Slicer/dcmqi, highdicom): for NCR, ED and ET a
  TID 1411 group referencing the region's SEG segment and the T1c series (the form
  dcmqi writes and reads; an empty region references its empty segment, which the
  SEG still describes); for WT and TC, unions with no segment of their own
  ("Referenced Segment" names one), a TID 1501 group with the T1c images as its
  source images.
- The **display group** (TID 1501) is what a viewer shows: one planar NUM, the
  "Area" enclosed by the region's outline on the slice where the region is largest
  (``outlines.largest_slice``; the outer boundary of its largest piece there), the NUM
  INFERRED FROM that one closed POLYLINE, and a "Comment" TEXT with the region's name
  and volume ("WT whole tumor 37.09 ml"). OHIF 3.13 keeps one SCOORD per
  measurement, lists a measurement only when its Tracking Identifier names a
  Cornerstone tool ("Cornerstone3DTools@^0.1.0:PlanarFreehandROI:WT whole tumor":
  the prefix is what it matches, the region's name follows), takes the Comment as
  the label and opens the SR on the first group's slice (so WT's). It merges the
  two groups of a region by their shared UID, so the panel has one entry per region;
  a group without any SCOORD would make its SR loader throw.
- An **empty region** (0 voxels) has no outline: its display group hangs on a point
  in the left margin of the slice WT is shown on (one row per region, so labels do
  not collide; coded "Display position only"), an "Area" of 0 mm² and the label
  "... 0 ml (none segmented)", under the Cornerstone ArrowAnnotate identifier
  (OHIF's freehand tool cannot draw a point). Its volume group says 0 ml.

Volumes are voxel count x voxel volume of the label map (regions.py), so they
equal the SEG masks to the voxel. The SR always cites the SEG (writer.py builds
it first) and lists it as evidence.

The quality report goes into TID 1500's "Qualitative Evaluations" container,
which OHIF does not read (so it cannot disturb the measurements): "Review
recommended" Yes/No always, the headline as TEXT, and per raised flag its check
coded "Present" followed by its summary as TEXT under the same concept (codes.py).
A device observer names the algorithm and model, since no person observed anything.
"""

from __future__ import annotations

from collections.abc import Mapping

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

import segnode.pipeline.outputs.codes as codes
from segnode.pipeline.outputs.errors import OutputError
from segnode.pipeline.outputs.outlines import (
    largest_slice,
    polygon_area_px,
    representative_outline,
)
from segnode.pipeline.outputs.provenance import AlgorithmProvenance, SeriesSpec
from segnode.pipeline.outputs.regions import REGION_NAMES, RegionStatistics
from segnode.pipeline.outputs.seg import segment_number
from segnode.pipeline.outputs.source import SourceSeries, plane_geometry
from segnode.pipeline.quality.record import QualityReport
from segnode.vocabulary import ALL_REGIONS, BASE_REGIONS, Region

#: The prefix OHIF 3.13 (@cornerstonejs/adapters 5.6.8) matches Tracking Identifiers with.
CORNERSTONE_TAG = "Cornerstone3DTools@^0.1.0"
#: The Cornerstone tool a region's outline is listed as (a closed planar polygon).
OUTLINE_TOOL = "PlanarFreehandROI"
#: The tool an empty region's display point is listed as (an arrow with a text).
ANCHOR_TOOL = "ArrowAnnotate"
#: Where an empty region's display point lies: this share of the image width from the
#: left edge, and rows spaced by region (WT highest) so their labels do not overlap.
ANCHOR_COLUMN_SHARE = 0.05
ANCHOR_FIRST_ROW_SHARE = 0.1
ANCHOR_ROW_STEP_SHARE = 0.16

VolumeGroup = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def tracking_identifier_text(region: Region, empty: bool) -> str:
    """E.g. "Cornerstone3DTools@^0.1.0:PlanarFreehandROI:WT whole tumor"."""
    tool = ANCHOR_TOOL if empty else OUTLINE_TOOL
    return f"{CORNERSTONE_TAG}:{tool}:{REGION_NAMES[region]}"


def region_label(region: Region, volume_ml: float) -> str:
    """The label a viewer lists: the region's name and its volume in ml.

    Two decimals, as OHIF prints NUMs; below 0.01 ml two significant digits, so a
    few voxels do not read as "0.00 ml" (none).
    """
    name = REGION_NAMES[region]
    if volume_ml == 0:
        return f"{name} 0 ml (none segmented)"
    if volume_ml < 0.01:
        return f"{name} {volume_ml:.2g} ml"
    return f"{name} {volume_ml:.2f} ml"


def observation_context(
    provenance: AlgorithmProvenance, series: SeriesSpec
) -> hd.sr.ObservationContext:
    """A device observer: the algorithm, its manufacturer and the model it ran."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=provenance.device_uid,
                name=provenance.algorithm_name,
                manufacturer_name=series.manufacturer,
                model_name=provenance.model_label,
            ),
        )
    )


def algorithm_id(provenance: AlgorithmProvenance) -> hd.sr.AlgorithmIdentification:
    """TID 4019: the algorithm's name and version, the model's identity as parameters."""
    return hd.sr.AlgorithmIdentification(
        name=provenance.algorithm_name,
        version=provenance.version_label,
        parameters=[f"{key}={value}" for key, value in provenance.parameters.items()],
    )


def _coordinates(
    source: SourceSeries,
    index: int,
    graphic_type: hd.sr.GraphicTypeValues,
    points: NDArray[np.float64],
    purpose: Code,
) -> hd.sr.CoordinatesForMeasurement:
    """A SCOORD on slice ``index``'s image (and frame), INFERRED FROM by its measurement."""
    instance = source.instance_of(index)
    coordinates = hd.sr.CoordinatesForMeasurement(
        graphic_type=graphic_type,
        graphic_data=points,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(instance.SOPClassUID),
            referenced_sop_instance_uid=str(instance.SOPInstanceUID),
            referenced_frame_numbers=[source.slices[index].frame] if source.is_multiframe else None,
        ),
        purpose=purpose,
    )
    if source.is_multiframe:
        coordinates.PixelOriginInterpretation = hd.sr.PixelOriginInterpretationValues.FRAME.value
    return coordinates


def _pixel_area_mm2(source: SourceSeries, index: int) -> float:
    _, spacing, _ = plane_geometry(source.instance_of(index), source.slices[index].frame)
    return float(spacing[0] * spacing[1])


def anchor_point(source: SourceSeries, region: Region) -> NDArray[np.float64]:
    """An empty region's display point (column, row): a pixel centre in the left margin."""
    column = int(ANCHOR_COLUMN_SHARE * source.columns) + 0.5
    share = ANCHOR_FIRST_ROW_SHARE + ANCHOR_ROW_STEP_SHARE * ALL_REGIONS.index(region)
    return np.array([[column, int(share * source.rows) + 0.5]])


def display_slice(masks: Mapping[Region, NDArray[np.bool_]], region: Region) -> int:
    """The slice a region is shown on: its largest, or for an empty one, WT's (else the middle)."""
    for candidate in (region, Region.WT):
        if masks[candidate].any():
            return largest_slice(masks[candidate])
    return int(masks[region].shape[0] // 2)


def display_group(
    region: Region,
    masks: Mapping[Region, NDArray[np.bool_]],
    statistics: RegionStatistics,
    source: SourceSeries,
    provenance: AlgorithmProvenance,
    uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The group a viewer lists (see the module docstring)."""
    volume = statistics[region]
    empty = volume.voxel_count == 0
    index = display_slice(masks, region)
    if empty:
        points = anchor_point(source, region)
        graphic_type, purpose, area_mm2 = hd.sr.GraphicTypeValues.POINT, codes.DISPLAY_ANCHOR, 0.0
    else:
        points = representative_outline(masks[region][index])
        graphic_type, purpose = hd.sr.GraphicTypeValues.POLYLINE, dcm_codes.SCT.Source
        area_mm2 = polygon_area_px(points) * _pixel_area_mm2(source, index)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid, identifier=tracking_identifier_text(region, empty)
        ),
        finding_type=codes.REGION_CODES[region],
        finding_category=codes.MORPHOLOGICALLY_ALTERED_STRUCTURE,
        algorithm_id=algorithm_id(provenance),
        measurements=[
            hd.sr.Measurement(
                name=codes.AREA,
                value=area_mm2,
                unit=codes.SQUARE_MILLIMETRE,
                referenced_coordinates=[_coordinates(source, index, graphic_type, points, purpose)],
            )
        ],
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.COMMENT,
            value=region_label(region, volume.volume_ml),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def _source_images_for_group(source: SourceSeries) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=str(source.instance_of(index).SOPClassUID),
            referenced_sop_instance_uid=ref.sop_instance_uid,
            referenced_frame_numbers=[ref.frame] if source.is_multiframe else None,
        )
        for index, ref in enumerate(source.slices)
    ]


def volume_group(
    region: Region,
    statistics: RegionStatistics,
    source: SourceSeries,
    provenance: AlgorithmProvenance,
    uid: str,
    segmentation: Dataset,
) -> VolumeGroup:
    """The group holding the region's volume (see the module docstring)."""
    volume = statistics[region]
    tracking = hd.sr.TrackingIdentifier(
        uid=uid, identifier=tracking_identifier_text(region, volume.voxel_count == 0)
    )
    measurements = [
        hd.sr.Measurement(name=codes.VOLUME, value=volume.volume_ml, unit=codes.MILLILITRE)
    ]
    finding_type = codes.REGION_CODES[region]
    category = codes.MORPHOLOGICALLY_ALTERED_STRUCTURE
    if region in BASE_REGIONS:
        # Built explicitly: ReferencedSegment.from_segmentation() fails on some
        # highdicom SEGs (stack-notes), and the source series is all it needs.
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=finding_type,
            finding_category=category,
            algorithm_id=algorithm_id(provenance),
            measurements=measurements,
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(segmentation.SOPClassUID),
                sop_instance_uid=str(segmentation.SOPInstanceUID),
                segment_number=segment_number(region),
                source_series=hd.sr.SourceSeriesForSegmentation(source.series_instance_uid),
            ),
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding_type,
        finding_category=category,
        algorithm_id=algorithm_id(provenance),
        measurements=measurements,
        source_images=_source_images_for_group(source),
    )


def quality_evaluations(quality: QualityReport) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": review recommended, the headline, each flag."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(
            name=codes.REVIEW_RECOMMENDED,
            value=codes.YES if quality.review_recommended else codes.NO,
            relationship_type=contains,
        ),
        hd.sr.TextContentItem(
            name=codes.QUALITY_SUMMARY, value=quality.headline, relationship_type=contains
        ),
    ]
    for flag in quality.flags:
        concept = codes.QA_CHECK_CODES[flag.check]
        items.append(
            hd.sr.CodeContentItem(name=concept, value=codes.PRESENT, relationship_type=contains)
        )
        items.append(
            hd.sr.TextContentItem(name=concept, value=flag.summary, relationship_type=contains)
        )
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=contains
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_measurement_report(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    statistics: RegionStatistics,
    series: SeriesSpec,
    provenance: AlgorithmProvenance,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    segmentation: Dataset,
    quality: QualityReport,
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR holding the TID 1500 report.

    Args:
        masks: (slice, row, column) masks of all five regions.
        statistics: their voxel counts and volumes (from the same masks).
        segmentation: the T1c's SEG, whose segments the volume groups reference
            (listed as evidence).
        quality: the job's quality report (its flags become qualitative evaluations).

    Raises:
        OutputError: if highdicom refuses the content.
    """
    try:
        groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | VolumeGroup] = []
        for region in ALL_REGIONS:
            uid = hd.UID()
            groups.append(display_group(region, masks, statistics, source, provenance, uid))
            groups.append(volume_group(region, statistics, source, provenance, uid, segmentation))
        report = hd.sr.MeasurementReport(
            observation_context=observation_context(provenance, series),
            procedure_reported=codes.PROCEDURE_REPORTED,
            imaging_measurements=groups,
        )
        report[0].ContentSequence.append(quality_evaluations(quality))
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*source.instances, segmentation],
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=series.manufacturer,
            is_complete=True,
            series_description=series.series_description,
            manufacturer_model_name=provenance.algorithm_name,
            software_versions=provenance.algorithm_version,
            coding_schemes=[codes.private_coding_scheme()],
        )
    except (ValueError, TypeError) as exc:
        raise OutputError(
            f"series {source.series_instance_uid}: highdicom refused the measurement report: {exc}"
        ) from exc
    _declare_character_set(sr, quality)
    return sr


def _declare_character_set(sr: hd.sr.Comprehensive3DSR, quality: QualityReport) -> None:
    """Declare UTF-8 when a flag's text is not ASCII ("3.1°").

    highdicom copies the T1c's Specific Character Set; a source in the default
    repertoire (none declared) cannot carry "°", and pydicom would write it in
    Latin-1 regardless. Every value is text in memory, so UTF-8 re-encodes them all.
    """
    texts = [quality.headline, *(flag.summary for flag in quality.flags)]
    if all(text.isascii() for text in texts):
        return
    sr.SpecificCharacterSet = "ISO_IR 192"
