"""The TID 1500 Measurement Report: volumes of WT, TC, ET, NCR and ED in ml.

Why this shape:

- One TID 1411 volumetric measurement group per region, each with its volume
  (SCT "Volume", UCUM "ml"), the region's code as finding type, the algorithm
  (TID 4019) and the region itself; a device observer names the algorithm and
  model, since no person observed anything.
- The region is given in one of two forms (``ResultSeriesSettings.sr_region_reference``):
  ``outlines`` (default), closed POLYLINE SCOORDs on every T1c image the region
  touches, which OHIF 3.13 displays; or ``segment``, a reference to the SEG
  segment with the source series, which OHIF 3.13's SR viewport crashes on.
  "Referenced Segment" names a single segment, and WT and TC are unions with no
  segment of their own, so in the segment form they still carry outlines.
- A region with no voxel has no outline and no segment to point at, and
  highdicom (rightly: TID 1411 requires a region) refuses a volumetric group
  without one; it is reported as a TID 1501 measurement group instead: 0 ml,
  the same finding type and tracking identifier, and the source images as the
  group's "Source images" so it stays tied to the series it was measured on.
- Volumes are voxel count x voxel volume of the label map (regions.py), so
  they equal the SEG masks to the voxel.
"""

from __future__ import annotations

from collections.abc import Mapping

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

import segnode.pipeline.outputs.codes as codes
from segnode.config.settings import SrRegionReference
from segnode.pipeline.outputs.errors import OutputError
from segnode.pipeline.outputs.outlines import mask_outlines
from segnode.pipeline.outputs.provenance import AlgorithmProvenance, SeriesSpec
from segnode.pipeline.outputs.regions import REGION_NAMES, RegionStatistics
from segnode.pipeline.outputs.seg import segment_number
from segnode.pipeline.outputs.source import SourceSeries
from segnode.vocabulary import ALL_REGIONS, BASE_REGIONS, Region

VolumetricGroup = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


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


def image_regions(source: SourceSeries, mask: NDArray[np.bool_]) -> list[hd.sr.ImageRegion]:
    """Closed POLYLINE outlines of a (slice, row, column) mask on each source image."""
    regions = []
    for index in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        instance = source.instance_of(int(index))
        frame = source.slices[int(index)].frame
        reference = hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(instance.SOPClassUID),
            referenced_sop_instance_uid=str(instance.SOPInstanceUID),
            referenced_frame_numbers=[frame] if source.is_multiframe else None,
        )
        for outline in mask_outlines(mask[int(index)]):
            regions.append(
                hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=outline,
                    source_image=reference,
                    pixel_origin_interpretation=(
                        hd.sr.PixelOriginInterpretationValues.FRAME
                        if source.is_multiframe
                        else None
                    ),
                )
            )
    return regions


def _source_images_for_group(source: SourceSeries) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=str(source.instance_of(index).SOPClassUID),
            referenced_sop_instance_uid=ref.sop_instance_uid,
            referenced_frame_numbers=[ref.frame] if source.is_multiframe else None,
        )
        for index, ref in enumerate(source.slices)
    ]


def measurement_group(
    region: Region,
    statistics: RegionStatistics,
    mask: NDArray[np.bool_],
    source: SourceSeries,
    provenance: AlgorithmProvenance,
    form: SrRegionReference,
    segmentation: Dataset | None,
) -> VolumetricGroup:
    """One region's measurement group (see the module docstring for the three forms)."""
    volume = statistics[region]
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=REGION_NAMES[region])
    measurements = [
        hd.sr.Measurement(name=codes.VOLUME, value=volume.volume_ml, unit=codes.MILLILITRE)
    ]
    finding_type = codes.REGION_CODES[region]
    category = codes.MORPHOLOGICALLY_ALTERED_STRUCTURE
    algorithm = algorithm_id(provenance)
    if volume.voxel_count == 0:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=finding_type,
            finding_category=category,
            algorithm_id=algorithm,
            measurements=measurements,
            source_images=_source_images_for_group(source),
        )
    if form is SrRegionReference.SEGMENT and region in BASE_REGIONS:
        if segmentation is None:
            raise OutputError("the segment form of the SR needs the SEG it refers to")
        # Built explicitly: ReferencedSegment.from_segmentation() fails on some
        # highdicom SEGs (stack-notes), and the source series is all it needs.
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=finding_type,
            finding_category=category,
            algorithm_id=algorithm,
            measurements=measurements,
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(segmentation.SOPClassUID),
                sop_instance_uid=str(segmentation.SOPInstanceUID),
                segment_number=segment_number(region),
                source_series=hd.sr.SourceSeriesForSegmentation(source.series_instance_uid),
            ),
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding_type,
        finding_category=category,
        algorithm_id=algorithm,
        measurements=measurements,
        referenced_regions=image_regions(source, mask),
    )


def build_measurement_report(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    statistics: RegionStatistics,
    series: SeriesSpec,
    provenance: AlgorithmProvenance,
    form: SrRegionReference,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    segmentation: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR holding the TID 1500 report.

    Args:
        masks: (slice, row, column) masks of all five regions.
        statistics: their voxel counts and volumes (from the same masks).
        form: how each group names its region (outlines or SEG segment).
        segmentation: the SEG the segment form refers to (listed as evidence).

    Raises:
        OutputError: if the segment form lacks its SEG, or highdicom refuses the content.
    """
    if form is SrRegionReference.SEGMENT and segmentation is None:
        raise OutputError("the segment form of the SR needs the SEG it refers to")
    try:
        groups = [
            measurement_group(
                region, statistics, masks[region], source, provenance, form, segmentation
            )
            for region in ALL_REGIONS
        ]
        report = hd.sr.MeasurementReport(
            observation_context=observation_context(provenance, series),
            procedure_reported=codes.PROCEDURE_REPORTED,
            imaging_measurements=groups,
        )
        evidence = [*source.instances, *([segmentation] if segmentation is not None else [])]
        return hd.sr.Comprehensive3DSR(
            evidence=evidence,
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
