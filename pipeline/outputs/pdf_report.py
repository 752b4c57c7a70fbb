"""A one-page PDF summary, wrapped as a DICOM Encapsulated PDF in the source study.

Why a PDF: it reaches people whose viewer shows neither SEG nor SR (reporting
systems, EHR document viewers). Pillow draws the page as an image and writes it
as PDF (no PDF library beyond what the node has); the page carries the volumes,
the algorithm and model provenance, "NOT FOR CLINICAL USE", and the key image:
the T1c slice with the largest tumour area, regions drawn in. No patient
identity is printed (Burned In Annotation NO); the DICOM patient and study
modules are copied from the source as the IOD requires.

highdicom 0.28.2 has no Encapsulated PDF class, so ``EncapsulatedPdf`` builds
the IOD (PS3.3 A.45.1) on highdicom's ``SOPClass``, which supplies the Patient,
General Study, Series, Equipment and SOP Common attributes.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from segnode.pipeline.outputs.annotation_text import (
    LEGEND_ORDER,
    Box,
    Rgb,
    draw_text,
    font,
    format_ml,
    printable,
    slice_label,
    text_box,
    wrap,
)
from segnode.pipeline.outputs.errors import OutputError
from segnode.pipeline.outputs.provenance import AlgorithmProvenance, SeriesSpec
from segnode.pipeline.outputs.regions import REGION_COLOURS_RGB, REGION_NAMES, RegionStatistics
from segnode.pipeline.outputs.secondary_capture import display_window, render_slice
from segnode.pipeline.outputs.source import SourceSeries, plane_geometry
from segnode.pipeline.quality.record import CHECK_TITLES, QualityReport
from segnode.vocabulary import BASE_REGIONS, LabelConvention, Region

#: A4 at 150 dpi.
PAGE_PX = (1240, 1754)
PAGE_DPI = 150.0
MARGIN_PX = 90
KEY_IMAGE_WIDTH_PX = 560
DOCUMENT_TITLE = "Brain tumour segmentation summary"


class EncapsulatedPdf(hd.base.SOPClass):
    """Encapsulated PDF Storage (1.2.840.10008.5.1.4.1.1.104.1) in the source study."""

    def __init__(
        self,
        document: bytes,
        source_instances: Sequence[Dataset],
        *,
        series: SeriesSpec,
        series_instance_uid: str,
        sop_instance_uid: str,
        manufacturer_model_name: str,
        software_versions: str,
        document_title: str = DOCUMENT_TITLE,
    ) -> None:
        """
        Args:
            document: the PDF bytes.
            source_instances: the images it was made from; the first gives the
                patient and study, all are listed in the Source Instance Sequence.

        Raises:
            OutputError: for bytes that are not a PDF or no source instance.
        """
        if not document.startswith(b"%PDF-"):
            raise OutputError("an encapsulated PDF needs PDF bytes (%PDF- header missing)")
        if not source_instances:
            raise OutputError("an encapsulated PDF needs the source instance of its study")
        first = source_instances[0]
        super().__init__(
            study_instance_uid=str(first.StudyInstanceUID),
            series_instance_uid=series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=EncapsulatedPDFStorage,
            instance_number=1,
            modality="DOC",
            manufacturer=series.manufacturer,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=series.series_description,
            manufacturer_model_name=manufacturer_model_name,
            software_versions=software_versions,
        )
        self.copy_patient_and_study_information(first)
        # SC Equipment module: made on a workstation.
        self.ConversionType = "WSD"
        # Encapsulated Document module.
        self.AcquisitionDateTime = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.BurnedInAnnotation = "NO"  # the document names no patient
        self.DocumentTitle = document_title
        self.ConceptNameCodeSequence: list[Dataset] = []  # Type 2: no code fits a summary
        self.MIMETypeOfEncapsulatedDocument = "application/pdf"
        self.EncapsulatedDocumentLength = len(document)
        # OB values have even length; PS3.3 C.24.2.1: pad with one trailing 00H.
        self.EncapsulatedDocument = document + b"\0" * (len(document) % 2)
        references = []
        for instance in source_instances:
            reference = Dataset()
            reference.ReferencedSOPClassUID = instance.SOPClassUID
            reference.ReferencedSOPInstanceUID = instance.SOPInstanceUID
            references.append(reference)
        self.SourceInstanceSequence = references


BLACK: Rgb = (0, 0, 0)
GREY: Rgb = (90, 90, 90)
BANNER: Rgb = (200, 0, 0)
#: Background of the quality headline: amber when a flag is raised, pale green when none is.
REVIEW_BOX: Rgb = (255, 200, 60)
CALM_BOX: Rgb = (220, 238, 220)
#: The key image never gets smaller than this (px); quality flags give way first.
MIN_KEY_IMAGE_PX = 320
#: Left column (key image) and right column (legend and volumes) of the key-image block.
LEGEND_X_OFFSET_PX = KEY_IMAGE_WIDTH_PX + 40


def key_slice(wt_mask: NDArray[np.bool_]) -> int:
    """The slice with the largest whole-tumour area (the middle slice when there is none)."""
    areas = wt_mask.reshape(wt_mask.shape[0], -1).sum(axis=1)
    return int(np.argmax(areas)) if areas.any() else wt_mask.shape[0] // 2


def key_image(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    index: int,
    size: tuple[int, int],
) -> Image.Image:
    """Slice ``index`` with its regions drawn and no text, resized to ``size`` (width, height)."""
    pixels = source.slice_pixels(index)
    picture = render_slice(
        pixels, {region: masks[region][index] for region in BASE_REGIONS}, display_window([pixels])
    )
    return Image.fromarray(picture, mode="RGB").resize(size, Image.Resampling.LANCZOS)


@dataclass(frozen=True, slots=True)
class PageItem:
    """One line of text on the page: what, where (its ink box), how big."""

    text: str
    box: Box
    size: int


@dataclass(frozen=True, slots=True)
class RenderedPage:
    """The page and where everything went (the tests read the layout)."""

    image: Image.Image
    items: tuple[PageItem, ...]
    banner: Box
    quality_headline: Box
    key_image: Box
    key_index: int
    swatches: tuple[tuple[Box, Rgb], ...]
    omitted_flags: int

    def texts(self) -> list[str]:
        return [item.text for item in self.items]


class _Flow:
    """Writes wrapped lines down a column, or (``draw`` None) only measures them."""

    def __init__(self, draw: ImageDraw.ImageDraw | None, x: int, y: int, width: int) -> None:
        self.draw, self.x, self.y, self.width = draw, x, y, width
        self.items: list[PageItem] = []

    def write(
        self, text: str, size: int = 22, fill: Rgb = BLACK, gap: int = 8, indent: int = 0
    ) -> None:
        face = font(size)
        for line in wrap(text, face, self.width - indent):
            self.put(line, self.x + indent, size, fill)
            self.y += size + 6
        self.y += gap

    def put(self, text: str, x: int, size: int, fill: Rgb = BLACK) -> None:
        face = font(size)
        if self.draw is not None:
            draw_text(self.draw, (x, self.y), text, face, fill)
        self.items.append(PageItem(text, text_box(face, (x, self.y), text), size))


def _quality(flow: _Flow, quality: QualityReport, max_flags: int) -> Box:
    """The Quality section: the headline in a coloured box, each flag, the checks that ran."""
    flow.write("Quality", size=30, gap=10)
    top = flow.y - 6
    headline_flow = _Flow(None, flow.x + 12, flow.y, flow.width - 24)
    headline_flow.write(quality.headline, size=26, gap=0)
    box = (flow.x, top, flow.x + flow.width, headline_flow.y + 4)
    if flow.draw is not None:
        flow.draw.rectangle(box, fill=REVIEW_BOX if quality.review_recommended else CALM_BOX)
    flow.x += 12
    flow.write(quality.headline, size=26, gap=14)
    flow.x -= 12
    for flag in quality.flags[:max_flags]:
        flow.write(flag.title, size=24, gap=2)
        flow.write(flag.summary, size=22, fill=(40, 40, 40), gap=10, indent=28)
    omitted = len(quality.flags) - max_flags
    if omitted > 0:
        flow.write(
            f"+ {omitted} more flag{'s' if omitted != 1 else ''}: see the SR in this study",
            size=22,
            gap=10,
            indent=28,
        )
    checks = ", ".join(CHECK_TITLES[check].lower() for check in quality.checked) or "none"
    flow.write(f"Checks run: {checks}.", size=20, fill=GREY, gap=20)
    return box


def _provenance(
    flow: _Flow,
    source: SourceSeries,
    statistics: RegionStatistics,
    provenance: AlgorithmProvenance,
    convention: LabelConvention,
) -> None:
    first = source.first
    flow.write("Source series", size=30, gap=10)
    flow.write(
        f"{first.get('SeriesDescription', '(no description)')} - series "
        f"{first.get('SeriesNumber', '?')}, {len(source.slices)} slices of {source.columns} x "
        f"{source.rows}, voxel volume {statistics.voxel_volume_mm3:.3f} mm3",
        gap=20,
    )
    flow.write("Algorithm and model", size=30, gap=10)
    convention_name = (
        "BraTS 2017-2021 (ET = 4)" if convention.et_label == 4 else "BraTS 2023+ (ET = 3)"
    )
    for line in (
        f"{provenance.algorithm_name} {provenance.algorithm_version}",
        f"model {provenance.model_id}, version {provenance.model_version}",
        f"model sha256 {provenance.model_sha256}",
        f"label convention {convention_name}",
        f"created {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ):
        flow.write(line, 20, gap=0)


def _legend(flow: _Flow, statistics: RegionStatistics) -> list[tuple[Box, Rgb]]:
    """The legend and volume table: swatch, region name, ml, voxels (WT and TC without colour)."""
    flow.write("Regions and volumes", size=26, gap=6)
    volume_x, voxels_x = flow.x + 265, flow.x + 385
    for x, heading in ((flow.x + 28, "Region"), (volume_x, "Volume"), (voxels_x, "Voxels")):
        flow.put(heading, x, 20, GREY)
    flow.y += 30
    swatches: list[tuple[Box, Rgb]] = []
    for region in LEGEND_ORDER:
        entry = statistics[region]
        colour = REGION_COLOURS_RGB.get(region)
        if colour is not None:
            swatch = (flow.x, flow.y + 3, flow.x + 18, flow.y + 21)
            swatches.append((swatch, colour))
            if flow.draw is not None:
                flow.draw.rectangle(swatch, fill=colour, outline=BLACK)
        flow.put(REGION_NAMES[region], flow.x + 28, 22)
        flow.put(format_ml(entry.volume_ml), volume_x, 22)
        flow.put(str(entry.voxel_count), voxels_x, 22)
        flow.y += 34
    flow.y += 8
    flow.write(
        "WT = NCR + ED + ET, TC = NCR + ET; volume = voxels x voxel volume of the T1c grid.",
        18,
        GREY,
        gap=0,
    )
    return swatches


def render_page(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    statistics: RegionStatistics,
    provenance: AlgorithmProvenance,
    convention: LabelConvention,
    quality: QualityReport,
) -> RenderedPage:
    """The summary page (A4, 150 dpi) and its layout.

    Top down: title, the red "NOT FOR CLINICAL USE" banner, the quality section,
    the key image (no text on it) with the legend and volumes beside it, and,
    anchored at the bottom, the source series and the algorithm and model.
    The key image takes the height left; below ``MIN_KEY_IMAGE_PX`` the last
    quality flags give way to a line saying how many more the SR holds.
    """
    page = Image.new("RGB", PAGE_PX, "white")
    draw = ImageDraw.Draw(page)
    width = PAGE_PX[0] - 2 * MARGIN_PX
    flow = _Flow(draw, MARGIN_PX, MARGIN_PX, width)
    flow.write(DOCUMENT_TITLE, size=44, gap=14)
    banner = (MARGIN_PX - 10, flow.y - 6, PAGE_PX[0] - MARGIN_PX + 10, flow.y + 62)
    draw.rectangle(banner, fill=BANNER)
    flow.put(printable(provenance.intended_use), MARGIN_PX, 52, (255, 255, 255))
    flow.y += 84
    flow.write(
        "Research software. Results are not reviewed by a physician and must not guide care.",
        20,
        GREY,
        gap=20,
    )

    bottom = _Flow(None, MARGIN_PX, 0, width)
    _provenance(bottom, source, statistics, provenance, convention)
    bottom_top = PAGE_PX[1] - MARGIN_PX - bottom.y

    index = key_slice(masks[Region.WT])
    shown = len(quality.flags)
    while shown > 0:
        trial = _Flow(None, MARGIN_PX, flow.y, width)
        _quality(trial, quality, shown)
        if bottom_top - trial.y - 40 - 70 >= MIN_KEY_IMAGE_PX:
            break
        shown -= 1
    headline = _quality(flow, quality, shown)

    # The key image, no larger than its column and the room above the bottom block.
    picture_w, picture_h = source.columns, source.rows
    scale = min(KEY_IMAGE_WIDTH_PX / picture_w, (bottom_top - flow.y - 40 - 70) / picture_h)
    size = (max(1, round(picture_w * scale)), max(1, round(picture_h * scale)))
    top = flow.y
    page.paste(key_image(source, masks, index, size), (MARGIN_PX, top))
    key_box = (MARGIN_PX, top, MARGIN_PX + size[0] - 1, top + size[1] - 1)
    caption = _Flow(draw, MARGIN_PX, top + size[1] + 8, KEY_IMAGE_WIDTH_PX)
    label = slice_label(source, index)
    if statistics[Region.WT].voxel_count:
        area_cm2 = (
            int(masks[Region.WT][index].sum())
            * float(np.prod(_in_plane_spacing(source, index)))
            / 100.0
        )
        caption.write(f"Key image: {label}, largest tumour area ({area_cm2:.1f} cm2)", 20, gap=0)
    else:
        caption.write(f"No tumour segmented; {label} shown", 20, gap=0)
    caption.write("Images are named by their Instance Number, as viewers show them.", 18, GREY)
    legend = _Flow(draw, MARGIN_PX + LEGEND_X_OFFSET_PX, top, width - LEGEND_X_OFFSET_PX)
    swatches = _legend(legend, statistics)

    final = _Flow(draw, MARGIN_PX, bottom_top, width)
    _provenance(final, source, statistics, provenance, convention)
    return RenderedPage(
        image=page,
        items=tuple(flow.items + caption.items + legend.items + final.items),
        banner=banner,
        quality_headline=headline,
        key_image=key_box,
        key_index=index,
        swatches=tuple(swatches),
        omitted_flags=len(quality.flags) - shown,
    )


def _in_plane_spacing(source: SourceSeries, index: int) -> tuple[float, float]:
    _, spacing, _ = plane_geometry(source.instance_of(index), source.slices[index].frame)
    return float(spacing[0]), float(spacing[1])


def pdf_bytes(page: Image.Image, title: str = DOCUMENT_TITLE, subject: str = "") -> bytes:
    """The page as a one-page PDF (Pillow's PDF writer).

    The page is an image, so its words are not text a PDF reader can search; the
    title and subject (the intended use and the quality headline) are.
    """
    buffer = io.BytesIO()
    page.save(
        buffer, format="PDF", resolution=PAGE_DPI, title=title, author="segnode", subject=subject
    )
    return buffer.getvalue()


def build_pdf_report(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    statistics: RegionStatistics,
    series: SeriesSpec,
    provenance: AlgorithmProvenance,
    convention: LabelConvention,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    quality: QualityReport,
) -> EncapsulatedPdf:
    """The summary page as an Encapsulated PDF in the source study."""
    page = render_page(source, masks, statistics, provenance, convention, quality)
    return EncapsulatedPdf(
        pdf_bytes(page.image, subject=f"{provenance.intended_use}. {quality.headline}"),
        source.instances,
        series=series,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        manufacturer_model_name=provenance.algorithm_name,
        software_versions=provenance.algorithm_version,
    )
