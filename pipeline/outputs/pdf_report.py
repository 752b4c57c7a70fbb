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

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from segnode.pipeline.outputs.errors import OutputError
from segnode.pipeline.outputs.provenance import AlgorithmProvenance, SeriesSpec
from segnode.pipeline.outputs.regions import REGION_COLOURS_RGB, REGION_NAMES, RegionStatistics
from segnode.pipeline.outputs.secondary_capture import display_window, render_overlay
from segnode.pipeline.outputs.source import SourceSeries, plane_geometry
from segnode.vocabulary import ALL_REGIONS, BASE_REGIONS, LabelConvention, Region

#: A4 at 150 dpi.
PAGE_PX = (1240, 1754)
PAGE_DPI = 150.0
MARGIN_PX = 90
KEY_IMAGE_WIDTH_PX = 620
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


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def key_slice(wt_mask: NDArray[np.bool_]) -> int:
    """The slice with the largest whole-tumour area (the middle slice when there is none)."""
    areas = wt_mask.reshape(wt_mask.shape[0], -1).sum(axis=1)
    return int(np.argmax(areas)) if areas.any() else wt_mask.shape[0] // 2


def render_page(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    statistics: RegionStatistics,
    provenance: AlgorithmProvenance,
    convention: LabelConvention,
) -> Image.Image:
    """The summary page as an RGB image (A4, 150 dpi)."""
    page = Image.new("RGB", PAGE_PX, "white")
    draw = ImageDraw.Draw(page)
    x, y = MARGIN_PX, MARGIN_PX

    def write(
        text: str, size: int = 26, fill: tuple[int, int, int] = (0, 0, 0), gap: int = 10
    ) -> None:
        nonlocal y
        draw.text((x, y), text, font=_font(size), fill=fill)
        y += size + gap

    write(DOCUMENT_TITLE, size=44, gap=18)
    banner = (x - 10, y - 6, PAGE_PX[0] - MARGIN_PX + 10, y + 62)
    draw.rectangle(banner, fill=(200, 0, 0))
    draw.text((x, y), provenance.intended_use, font=_font(52), fill=(255, 255, 255))
    y += 90
    write(
        "Research software. Results are not reviewed by a physician and must not guide care.",
        22,
        (90, 90, 90),
        24,
    )

    first = source.first
    spacing = statistics.voxel_volume_mm3
    write("Source series", size=30, gap=12)
    write(
        f"{first.get('SeriesDescription', '(no description)')} - series {first.get('SeriesNumber', '?')}, "
        f"{len(source.slices)} slices of {source.columns} x {source.rows}, voxel volume {spacing:.3f} mm3",
        22,
        gap=24,
    )

    write("Volumes", size=30, gap=12)
    columns = (x, x + 110, x + 560, x + 760)
    for column, heading in zip(
        columns, ("Region", "Description", "Voxels", "Volume (ml)"), strict=True
    ):
        draw.text((column, y), heading, font=_font(24), fill=(0, 0, 0))
    y += 36
    draw.line((x, y - 6, PAGE_PX[0] - MARGIN_PX, y - 6), fill=(0, 0, 0), width=2)
    for region in ALL_REGIONS:
        volume = statistics[region]
        colour = REGION_COLOURS_RGB.get(region, (0, 0, 0))
        if region in BASE_REGIONS:
            draw.rectangle((x, y + 4, x + 18, y + 22), fill=colour, outline=(0, 0, 0))
        cells = (
            region.value,
            REGION_NAMES[region].split(" ", 1)[1],
            str(volume.voxel_count),
            f"{volume.volume_ml:.2f}",
        )
        for column, cell in zip(columns, cells, strict=True):
            draw.text(
                (column + (28 if column == x else 0), y), cell, font=_font(24), fill=(0, 0, 0)
            )
        y += 34
    y += 14
    write(
        "WT = NCR + ED + ET, TC = NCR + ET; volume = voxels x voxel volume of the T1c grid.",
        20,
        (90, 90, 90),
        24,
    )

    write("Algorithm and model", size=30, gap=12)
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
        write(line, 20, gap=8)
    y += 20

    index = key_slice(masks[Region.WT])
    pixels = source.slice_pixels(index)
    overlay = render_overlay(
        pixels,
        {region: masks[region][index] for region in BASE_REGIONS},
        display_window([pixels]),
        (provenance.intended_use,),
    )
    key = Image.fromarray(overlay, mode="RGB")
    height = round(key.height * KEY_IMAGE_WIDTH_PX / key.width)
    available = PAGE_PX[1] - MARGIN_PX - y - 40
    if height > available:
        key = key.resize(
            (round(KEY_IMAGE_WIDTH_PX * available / height), available), Image.Resampling.LANCZOS
        )
    else:
        key = key.resize((KEY_IMAGE_WIDTH_PX, height), Image.Resampling.LANCZOS)
    page.paste(key, (x, y))
    area_cm2 = (
        int(masks[Region.WT][index].sum())
        * float(np.prod(_in_plane_spacing(source, index)))
        / 100.0
    )
    caption = (
        f"Key image: slice {index + 1} of {len(source.slices)}, largest tumour area ({area_cm2:.1f} cm2)"
        if statistics[Region.WT].voxel_count
        else f"No tumour segmented; slice {index + 1} of {len(source.slices)} shown"
    )
    draw.text((x, y + key.height + 8), caption, font=_font(20), fill=(0, 0, 0))
    return page


def _in_plane_spacing(source: SourceSeries, index: int) -> tuple[float, float]:
    _, spacing, _ = plane_geometry(source.instance_of(index), source.slices[index].frame)
    return float(spacing[0]), float(spacing[1])


def pdf_bytes(page: Image.Image, title: str = DOCUMENT_TITLE) -> bytes:
    """The page as a one-page PDF (Pillow's PDF writer)."""
    buffer = io.BytesIO()
    page.save(buffer, format="PDF", resolution=PAGE_DPI, title=title, author="segnode")
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
) -> EncapsulatedPdf:
    """The summary page as an Encapsulated PDF in the source study."""
    page = render_page(source, masks, statistics, provenance, convention)
    return EncapsulatedPdf(
        pdf_bytes(page),
        source.instances,
        series=series,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        manufacturer_model_name=provenance.algorithm_name,
        software_versions=provenance.algorithm_version,
    )
