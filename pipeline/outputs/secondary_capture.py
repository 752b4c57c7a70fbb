"""Secondary capture images: the T1c slices with the tumour drawn in, for viewers without SEG.

Why burned-in pixels: a PACS or viewer that cannot display SEG or SR still
shows an RGB image. Which slices: every T1c slice the whole tumour touches,
one SC image each, in slice order (all slices would mostly repeat the plain
T1c the PACS already holds). An empty result gets one image, the middle
slice, saying so, so a requested SC series always exists.

Why a band: text over the image hid anatomy, so each image is the T1c slice at
its own resolution, untouched, under the annotation band of ``annotation_band``
(warning, slice name, legend, quality flags, model). Every image of a series
gets the same band height, so scrolling does not shift the image.

Geometry: the band adds rows and changes nothing else, so the image pixels
keep the source's spacing and Pixel Spacing (0028,0030) is written (the SC
Image module's Basic Pixel Spacing Calibration macro): viewers measure in mm
(cornerstone, OHIF's renderer, takes Pixel Spacing as is for non-projection
classes). Patient Orientation stays right, since rows and columns keep their
directions. Image Position/Orientation (Patient) and a Frame of Reference are
not written: the canvas's first pixel is in the band, not in the patient, and
with them a viewer could place the picture in the T1c's space (reference
lines, synchronised scrolling) as if it were a slice of the volume.

Every image carries "NOT FOR CLINICAL USE" in its pixels (Burned In Annotation
YES) and no patient identity in its pixels; the patient and study modules are
copied from the source image by highdicom, as the IOD requires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DS
from scipy import ndimage

from segnode.pipeline.outputs.annotation_band import band_text, draw_band, layout_band
from segnode.pipeline.outputs.annotation_text import slice_label
from segnode.pipeline.outputs.errors import OutputError
from segnode.pipeline.outputs.provenance import AlgorithmProvenance, SeriesSpec
from segnode.pipeline.outputs.regions import REGION_COLOURS_RGB, RegionStatistics
from segnode.pipeline.outputs.source import SourceSeries, plane_geometry
from segnode.pipeline.quality.record import QualityReport
from segnode.vocabulary import BASE_REGIONS, Region

#: Opacity of the region fill; the region's border is drawn opaque.
FILL_ALPHA = 0.35
#: Percentiles of the displayed pixels mapped to black and white.
WINDOW_PERCENTILES = (0.5, 99.5)

Window = tuple[float, float]


def display_window(planes: Sequence[NDArray[np.float64]]) -> Window:
    """One grey window for a set of slices, so brightness does not jump between images."""
    values = np.concatenate([plane.ravel() for plane in planes])
    foreground = values[values > values.min()]
    low, high = np.percentile(foreground if foreground.size else values, WINDOW_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def render_slice(
    pixels: NDArray[np.float64],
    masks: Mapping[Region, NDArray[np.bool_]],
    window: Window,
) -> NDArray[np.uint8]:
    """An RGB (rows, columns, 3) picture of one slice with the labelled regions, and no text.

    Args:
        pixels: the slice's grey values.
        masks: (rows, columns) masks of NCR, ED and ET.
        window: grey values shown as black and white.
    """
    low, high = window
    grey = np.clip((pixels - low) / (high - low), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for region in BASE_REGIONS:
        mask = masks[region]
        if not mask.any():
            continue
        colour = np.asarray(REGION_COLOURS_RGB[region], dtype=np.float64)
        rgb[mask] = (1 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * colour
        border = mask & ~ndimage.binary_erosion(mask)
        rgb[border] = colour
    return np.round(rgb).astype(np.uint8)


def patient_orientation(instance: Dataset, frame: int) -> tuple[str, str]:
    """Patient Orientation (0020,0020) of a slice: the dominant direction of rows and columns.

    Oblique directions are rounded to their main axis (highdicom accepts single
    letters only); the SC is a picture, its geometry is the source image's.
    """
    orientation, _, _ = plane_geometry(instance, frame)
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def letter(cosines: NDArray[np.float64]) -> str:
        axis = int(np.argmax(np.abs(cosines)))
        return letters[axis][0] if cosines[axis] > 0 else letters[axis][1]

    return letter(orientation[:3]), letter(orientation[3:])


def slices_to_show(wt_mask: NDArray[np.bool_]) -> list[int]:
    """Indices of the slices with tumour, or the middle slice when there is none."""
    with_tumour = [
        int(i) for i in np.flatnonzero(wt_mask.reshape(wt_mask.shape[0], -1).any(axis=1))
    ]
    return with_tumour or [wt_mask.shape[0] // 2]


def build_secondary_captures(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    series: SeriesSpec,
    provenance: AlgorithmProvenance,
    *,
    series_instance_uid: str,
    statistics: RegionStatistics,
    quality: QualityReport,
) -> list[hd.sc.SCImage]:
    """One RGB SC image per tumour slice, each its T1c slice under an annotation band.

    Args:
        statistics: the whole label map's volumes, for the legend.
        quality: the job's quality report, for the band's quality lines.

    Raises:
        OutputError: if highdicom refuses an image.
    """
    indices = slices_to_show(masks[Region.WT])
    planes = [source.slice_pixels(index) for index in indices]
    window = display_window(planes)
    layouts = [
        layout_band(
            band_text(source, index, statistics, provenance, quality), source.columns, source.rows
        )
        for index in indices
    ]
    band_rows = max(layout.height for layout in layouts)
    images = []
    for number, (index, plane, layout) in enumerate(
        zip(indices, planes, layouts, strict=True), start=1
    ):
        instance = source.instance_of(index)
        ref = source.slices[index]
        picture = render_slice(
            plane, {region: masks[region][index] for region in BASE_REGIONS}, window
        )
        rgb = np.concatenate([draw_band(layout, band_rows), picture], axis=0)
        try:
            image = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=instance,
                pixel_array=rgb,
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=series_instance_uid,
                series_number=series.series_number,
                sop_instance_uid=hd.UID(),
                instance_number=number,
                manufacturer=series.manufacturer,
                patient_orientation=patient_orientation(instance, ref.frame),
                transfer_syntax_uid=ExplicitVRLittleEndian,
                series_description=series.series_description,
                manufacturer_model_name=provenance.algorithm_name,
                software_versions=provenance.algorithm_version,
            )
        except (ValueError, TypeError) as exc:
            raise OutputError(
                f"series {source.series_instance_uid}: highdicom refused secondary capture "
                f"{number}: {exc}"
            ) from exc
        _, spacing, _ = plane_geometry(instance, ref.frame)
        # Row spacing \ column spacing, as in the source: the band only adds rows.
        image.PixelSpacing = [DS(float(value), auto_format=True) for value in spacing]
        image.BurnedInAnnotation = "YES"
        # General Series Laterality is Type 2C (paired body parts) unless Image
        # Laterality says otherwise: the brain is unpaired, "U".
        image.ImageLaterality = "U"
        image.ConversionType = "WSD"  # rendered on a workstation, not digitised
        # The source's modality (MR), not highdicom's "OT": OHIF 3.13 opens its cine player
        # over the top of every OT series (customization autoCineModalities = OT, US), which
        # hid the band's first lines; an MR stack opens without it.
        image.Modality = str(instance.get("Modality", "OT"))
        image.ImageComments = provenance.intended_use
        image.DerivationDescription = (
            f"{slice_label(source, index)} with tumour regions NCR/ED/ET by "
            f"{provenance.algorithm_name} ({provenance.model_label}); rows 1-{band_rows} are "
            f"an annotation band above the {source.rows} image rows"
        )[:1024]
        reference = Dataset()
        reference.ReferencedSOPClassUID = instance.SOPClassUID
        reference.ReferencedSOPInstanceUID = instance.SOPInstanceUID
        if source.is_multiframe:
            reference.ReferencedFrameNumber = ref.frame
        image.SourceImageSequence = [reference]
        images.append(image)
    return images
