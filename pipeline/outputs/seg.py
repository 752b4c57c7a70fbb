"""The DICOM Segmentation: one BINARY SEG with the NCR, ED and ET segments.

Why BINARY with three disjoint segments: the LABELMAP SEG is refused by DCMTK
3.6.7 storescu and Orthanc 1.10.1 (stack-notes), and the label map's own
semantics (each voxel one label) survive as non-overlapping segments; WT and TC
are unions a reader forms itself (the SR reports their volumes).

Geometry: the SEG is built from the T1c source images themselves (highdicom
copies the patient and study modules, the frame of reference and each frame's
plane position from them), one frame per source slice and segment; empty
frames are omitted (highdicom keeps them all when every frame is empty, so an
empty result is still a valid SEG with all three segments described).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

import segnode.pipeline.outputs.codes as codes
from segnode.pipeline.outputs.enums import SegmentAlgorithmType
from segnode.pipeline.outputs.errors import OutputError, OutputSpecError
from segnode.pipeline.outputs.provenance import LO_MAX_CHARS, AlgorithmProvenance, SeriesSpec
from segnode.pipeline.outputs.regions import REGION_COLOURS_RGB
from segnode.pipeline.outputs.source import SourceSeries
from segnode.vocabulary import BASE_REGIONS, Region

#: Content Label (0070,0080) of the SEG: a CS value, upper case, at most 16 characters.
CONTENT_LABEL = "TUMOUR"


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """One segment of the SEG: which region, how it is coded and shown."""

    number: int
    region: Region
    label: str
    property_type: Code
    property_category: Code = codes.MORPHOLOGICALLY_ALTERED_STRUCTURE
    colour_rgb: tuple[int, int, int] = (255, 255, 255)
    algorithm_type: SegmentAlgorithmType = SegmentAlgorithmType.AUTOMATIC

    def __post_init__(self) -> None:
        if not 1 <= self.number <= 65535:
            raise OutputSpecError(f"segment number {self.number} not in 1..65535")
        if self.region not in BASE_REGIONS:
            raise OutputSpecError(
                f"segment {self.number}: {self.region} is a union of labels, not a segment"
            )
        if not self.label.strip() or len(self.label) > LO_MAX_CHARS:
            raise OutputSpecError(f"segment {self.number}: label {self.label!r} is not a LO value")
        if any(not 0 <= c <= 255 for c in self.colour_rgb):
            raise OutputSpecError(f"segment {self.number}: colour {self.colour_rgb} not 8-bit RGB")
        try:
            algorithm_type = SegmentAlgorithmType(self.algorithm_type)
        except ValueError as exc:
            raise OutputSpecError(
                f"segment {self.number}: algorithm type {self.algorithm_type!r} is not one of "
                f"{[t.value for t in SegmentAlgorithmType]}"
            ) from exc
        object.__setattr__(self, "algorithm_type", algorithm_type)


#: The segments every SEG carries, numbered 1..3 in label order.
TUMOUR_SEGMENTS: tuple[SegmentSpec, ...] = tuple(
    SegmentSpec(
        number=number,
        region=region,
        label=label,
        property_type=codes.REGION_CODES[region],
        colour_rgb=REGION_COLOURS_RGB[region],
    )
    for number, (region, label) in enumerate(
        [
            (Region.NCR, "Necrosis (NCR)"),
            (Region.ED, "Edema (ED)"),
            (Region.ET, "Enhancing tumor (ET)"),
        ],
        start=1,
    )
)


def segment_number(region: Region, segments: tuple[SegmentSpec, ...] = TUMOUR_SEGMENTS) -> int:
    """The SEG segment number of a labelled region."""
    for segment in segments:
        if segment.region == region:
            return segment.number
    raise OutputError(f"no segment for region {region}")


def algorithm_identification(provenance: AlgorithmProvenance) -> hd.AlgorithmIdentificationSequence:
    """Segment Algorithm Identification: segnode, its version and the model's id and checksum."""
    return hd.AlgorithmIdentificationSequence(
        name=provenance.algorithm_name,
        family=codes.ALGORITHM_FAMILY,
        version=provenance.version_label,
        parameters=provenance.parameters,
    )


def _segment_descriptions(
    segments: tuple[SegmentSpec, ...], provenance: AlgorithmProvenance
) -> list[hd.seg.SegmentDescription]:
    algorithm = algorithm_identification(provenance)
    return [
        hd.seg.SegmentDescription(
            segment_number=segment.number,
            segment_label=segment.label,
            segmented_property_category=segment.property_category,
            segmented_property_type=segment.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues(segment.algorithm_type.value),
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*segment.colour_rgb),
        )
        for segment in segments
    ]


def source_frame_masks(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    segments: tuple[SegmentSpec, ...] = TUMOUR_SEGMENTS,
) -> NDArray[np.bool_]:
    """Masks as highdicom wants them: (source frames, rows, columns, segments).

    Classic series: one frame per source instance, in slice order (the order of
    ``source.instances``). Enhanced MR: the frames of the one instance in its own
    frame order; frames no slice refers to (dropped duplicates) stay empty.
    """
    stacked = np.stack([masks[segment.region] for segment in segments], axis=-1)
    if not source.is_multiframe:
        return stacked
    frames = np.zeros(
        (int(source.first.NumberOfFrames), source.rows, source.columns, len(segments)),
        dtype=bool,
    )
    for index, ref in enumerate(source.slices):
        frames[ref.frame - 1] = stacked[index]
    return frames


def highdicom_source_instances(source: SourceSeries) -> list[Dataset]:
    """The source instances as highdicom 0.28.2 can read them.

    highdicom reads a multi-frame source's pixel spacing and orientation from the
    Shared Functional Groups only; some scanners (Philips Enhanced MR) put them in
    every Per-Frame Functional Groups item instead. ``check_label_geometry`` has
    proved all frames share them, so frame 1's items are added to a shared group
    of a copy (elements are shared with the original, which is not modified).
    """
    if not source.is_multiframe:
        return list(source.instances)
    instance = source.first
    shared_sequence = instance.get("SharedFunctionalGroupsSequence")
    shared = shared_sequence[0] if shared_sequence else Dataset()
    first_frame = instance.PerFrameFunctionalGroupsSequence[0]
    missing = [
        name
        for name in ("PixelMeasuresSequence", "PlaneOrientationSequence")
        if name not in shared and name in first_frame
    ]
    if not missing:
        return [instance]
    completed = Dataset()
    for element in shared:
        completed.add(element)
    for name in missing:
        completed.add(first_frame[name])
    copy = Dataset()
    for element in instance:
        if element.keyword != "SharedFunctionalGroupsSequence":
            copy.add(element)
    copy.SharedFunctionalGroupsSequence = [completed]
    copy.file_meta = instance.file_meta
    return [copy]


def build_segmentation(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    series: SeriesSpec,
    provenance: AlgorithmProvenance,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    segments: tuple[SegmentSpec, ...] = TUMOUR_SEGMENTS,
) -> hd.seg.Segmentation:
    """The BINARY SEG of the labelled regions on the source series.

    Args:
        source: the T1c series the label map lies on (checked geometry).
        masks: (slice, row, column) masks per region, slices as in ``source.slices``.
        series: series number, description and manufacturer.
        provenance: algorithm and model, written as each segment's Algorithm Identification.

    Raises:
        OutputError: if highdicom refuses the inputs (the message says why).
    """
    numbers = [segment.number for segment in segments]
    if numbers != list(range(1, len(segments) + 1)):
        raise OutputSpecError(f"segment numbers {numbers} are not 1..{len(segments)} in order")
    try:
        return hd.seg.Segmentation(
            source_images=highdicom_source_instances(source),
            pixel_array=source_frame_masks(source, masks, segments),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(segments, provenance),
            series_instance_uid=series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=series.manufacturer,
            manufacturer_model_name=provenance.algorithm_name,
            software_versions=provenance.algorithm_version,
            device_serial_number=provenance.model_sha256[:16],
            content_description=provenance.intended_use,
            content_label=CONTENT_LABEL,
            series_description=series.series_description,
        )
    except (ValueError, TypeError) as exc:
        raise OutputError(
            f"series {source.series_instance_uid}: highdicom refused the segmentation: {exc}"
        ) from exc
