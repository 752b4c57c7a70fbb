"""Secondary captures: the T1c slice untouched under an annotation band that carries all text.

The pixel tests rebuild what the writer should have drawn (the slice with its regions, the
band from its layout) and compare the written pixels with it exactly: the image rows are
the rendered slice and nothing else (no text over anatomy), and the band rows are the band.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from numpy.typing import NDArray

from segnode.pipeline.outputs.annotation_band import (
    REVIEW_COLOUR,
    WARNING_BAR,
    BandLayout,
    band_text,
    draw_band,
    layout_band,
)
from segnode.pipeline.outputs.annotation_text import format_ml
from segnode.pipeline.outputs.provenance import series_description
from segnode.pipeline.outputs.regions import (
    REGION_COLOURS_RGB,
    REGION_NAMES,
    convention_of,
    label_array,
    region_masks,
    region_statistics,
    voxel_volume_mm3,
)
from segnode.pipeline.outputs.secondary_capture import display_window, render_slice, slices_to_show
from segnode.pipeline.outputs.source import SourceSeries, load_source_series
from segnode.pipeline.quality.record import QaCheck, QaFlag, QualityReport
from segnode.vocabulary import ALL_REGIONS, BASE_REGIONS, Region
from tests.pipeline.outputs.dicom_checks import (
    FLAGGED,
    PROVENANCE,
    T1cCase,
    Written,
    dciodvfy,
    unexpected_warnings,
)


def read_images(written: Written) -> list[pydicom.Dataset]:
    images = [pydicom.dcmread(obj.path) for obj in written.record.of_kind("sc")]
    return sorted(images, key=lambda image: int(image.InstanceNumber))


@dataclass(frozen=True)
class Expected:
    """What the writer should have drawn for one label map."""

    source: SourceSeries
    indices: list[int]
    pictures: list[NDArray[np.uint8]]
    layouts: list[BandLayout]

    @property
    def band_rows(self) -> int:
        return max(layout.height for layout in self.layouts)


def expected(t1c: T1cCase, labels: sitk.Image, quality: QualityReport) -> Expected:
    convention = convention_of(4)
    masks = region_masks(label_array(labels, convention), convention)
    statistics = region_statistics(masks, voxel_volume_mm3(labels))
    source = load_source_series(t1c.files, t1c.volume.slices)
    indices = slices_to_show(masks[Region.WT])
    planes = [source.slice_pixels(index) for index in indices]
    window = display_window(planes)
    pictures = [
        render_slice(plane, {r: masks[r][index] for r in BASE_REGIONS}, window)
        for index, plane in zip(indices, planes, strict=True)
    ]
    layouts = [
        layout_band(
            band_text(source, index, statistics, PROVENANCE, quality), source.columns, source.rows
        )
        for index in indices
    ]
    return Expected(source, indices, pictures, layouts)


@pytest.mark.parametrize("variant", ["written", "written_empty", "written_flagged"])
def test_every_sc_image_passes_dciodvfy(variant: str, request: pytest.FixtureRequest) -> None:
    written: Written = request.getfixturevalue(variant)
    assert written.record.of_kind("sc")
    for obj in written.record.of_kind("sc"):
        validation = dciodvfy(obj.path)
        assert validation.errors == [], obj.path.name
        assert unexpected_warnings(validation) == [], obj.path.name


def test_one_image_per_tumour_slice_derived_from_its_t1c_image(
    written: Written, t1c: T1cCase
) -> None:
    labels = sitk.GetArrayFromImage(written.labels)
    tumour_slices = [z for z in range(labels.shape[0]) if labels[z].any()]
    images = read_images(written)
    assert [int(image.InstanceNumber) for image in images] == list(range(1, len(tumour_slices) + 1))
    sources = [image.SourceImageSequence[0].ReferencedSOPInstanceUID for image in images]
    assert sources == [t1c.volume.slices[z].sop_instance_uid for z in tumour_slices]
    assert len({image.SeriesInstanceUID for image in images}) == 1


@pytest.mark.parametrize(
    ("variant", "quality"), [("written", QualityReport()), ("written_flagged", FLAGGED)]
)
def test_image_rows_are_the_slice_and_band_rows_the_band(
    variant: str, quality: QualityReport, t1c: T1cCase, request: pytest.FixtureRequest
) -> None:
    written: Written = request.getfixturevalue(variant)
    want = expected(t1c, written.labels, quality)
    images = read_images(written)
    assert len(images) == len(want.indices)
    band = want.band_rows
    assert 0 < band <= t1c.volume.image.GetSize()[1]
    for image, picture, layout in zip(images, want.pictures, want.layouts, strict=True):
        pixels = image.pixel_array
        # Same canvas for the whole series (scrolling does not shift the image).
        assert pixels.shape == (band + picture.shape[0], picture.shape[1], 3)
        np.testing.assert_array_equal(pixels[band:], picture)  # no text over the image
        np.testing.assert_array_equal(pixels[:band], draw_band(layout, band))
        for item in layout.items:  # every text is inside the band and has ink there
            left, top, right, bottom = item.box
            assert 0 <= top and bottom < band and right <= pixels.shape[1], item.text
            ink = pixels[top : bottom + 1, left : right + 1].reshape(-1, 3)
            assert len(np.unique(ink, axis=0)) > 2, item.text


def test_band_says_the_warning_slice_legend_quality_and_model(
    t1c: T1cCase, written: Written
) -> None:
    want = expected(t1c, written.labels, QualityReport(checked=(QaCheck.MOTION,)))
    layout, index = want.layouts[0], want.indices[0]
    texts = [item.text for item in layout.items]
    assert texts[0] == "NOT FOR CLINICAL USE"
    number = int(want.source.instance_of(index).InstanceNumber)
    assert f"T1c image {number}" in texts
    statistics = written.record.statistics
    joined = " | ".join(texts)
    for region in ALL_REGIONS:
        assert f"{REGION_NAMES[region]} {format_ml(statistics[region].volume_ml)}" in texts
    assert "No quality flag raised (1 check)" in texts
    assert "segnode 0.1.0" in joined and PROVENANCE.model_id in joined
    # The warning sits centred on the red bar across the band's top.
    warning = layout.items[0]
    centre = (warning.box[0] + warning.box[2]) / 2
    assert abs(centre - t1c.volume.image.GetSize()[0] / 2) <= 2
    assert warning.box[3] <= layout.warning_bar[3]


def test_legend_swatches_have_the_region_colours(written: Written, t1c: T1cCase) -> None:
    want = expected(t1c, written.labels, QualityReport())
    image = read_images(written)[0]
    pixels = image.pixel_array
    colours = []
    for (left, top, right, bottom), colour in want.layouts[0].swatches:
        inside = pixels[top + 2 : bottom - 1, left + 2 : right - 1].reshape(-1, 3)
        assert (inside == colour).all()
        colours.append(colour)
    assert colours == [REGION_COLOURS_RGB[region] for region in BASE_REGIONS]
    bar = pixels[: want.layouts[0].warning_bar[3] + 1]
    assert ((bar == WARNING_BAR).all(axis=-1)).mean() > 0.6  # the red bar, white text on it
    assert (bar.min(axis=-1) > 160).sum() > 50  # anti-aliased white letters


def test_quality_flags_appear_in_the_band(
    written: Written, written_flagged: Written, t1c: T1cCase
) -> None:
    plain, flagged = read_images(written)[0], read_images(written_flagged)[0]
    assert flagged.Rows > plain.Rows  # the band grew for the flag lines

    def headline_amber(image: pydicom.Dataset, quality: QualityReport) -> int:
        """Amber pixels (anti-aliased: near the colour) in the quality headline's box."""
        layout = expected(t1c, written.labels, quality).layouts[0]
        (item,) = [item for item in layout.items if item.text == quality.headline]
        left, top, right, bottom = item.box
        box = image.pixel_array[top : bottom + 1, left : right + 1].astype(int)
        red, green, blue = box[..., 0], box[..., 1], box[..., 2]
        return int(((red > 150) & (green > 0.55 * red) & (green < 0.85 * red) & (blue < 60)).sum())

    assert REVIEW_COLOUR == (255, 190, 0)
    assert headline_amber(flagged, FLAGGED) > 30
    assert headline_amber(plain, QualityReport()) == 0


def test_flag_lines_are_wrapped_and_bounded(t1c: T1cCase, written: Written) -> None:
    want = expected(t1c, written.labels, FLAGGED)
    layout = want.layouts[0]
    texts = [item.text for item in layout.items]
    assert "REVIEW RECOMMENDED: 2 quality flags" in texts
    words = " ".join(texts)
    assert "Inter-series motion: FLAIR is 16.2 mm / 3.1° from the T1c" in words
    assert "Slice thickness outside training data:" in words
    assert max(item.box[2] for item in layout.items) <= layout.width
    many = QualityReport(
        flags=tuple(
            QaFlag(check=check, summary="a long sentence about this check " * 4)
            for check in QaCheck
        )
    )
    text = band_text(want.source, want.indices[0], written.record.statistics, PROVENANCE, many)
    bounded = layout_band(text, 256, 224)
    assert bounded.height <= 224
    assert bounded.omitted_flags > 0
    assert any("more quality flags: see the PDF or SR" in item.text for item in bounded.items)
    assert any(item.text.startswith("segnode 0.1.0") for item in bounded.items)


def test_slice_is_named_by_the_source_instance_number(written: Written, t1c: T1cCase) -> None:
    """Instance Numbers unrelated to our slice order: the band names the image's own."""
    source = load_source_series(t1c.files, t1c.volume.slices)
    renumbered = []
    for position, instance in enumerate(source.instances):
        instance = copy.deepcopy(instance)
        instance.InstanceNumber = 500 - 3 * position
        renumbered.append(instance)
    other = SourceSeries(tuple(renumbered), source.slices)
    convention = convention_of(4)
    masks = region_masks(label_array(written.labels, convention), convention)
    index = slices_to_show(masks[Region.WT])[0]
    text = band_text(other, index, written.record.statistics, PROVENANCE, QualityReport())
    assert text.slice_label == f"T1c image {int(other.instance_of(index).InstanceNumber)}"
    assert text.slice_label != f"T1c image {index + 1}"
    # And in the written objects: each names the Instance Number of the image it derives from.
    numbers = {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): int(
            pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber
        )
        for path in t1c.files
    }
    for image in read_images(written):
        number = numbers[image.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert image.DerivationDescription.startswith(f"T1c image {number} ")


def test_sc_keeps_pixel_spacing_and_no_patient_geometry(written: Written, t1c: T1cCase) -> None:
    source = pydicom.dcmread(t1c.files[0], stop_before_pixels=True)
    for image in read_images(written):
        assert [float(v) for v in image.PixelSpacing] == pytest.approx(
            [float(v) for v in source.PixelSpacing]
        )
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID"):
            assert keyword not in image
        assert image.BurnedInAnnotation == "YES"
        assert image.PhotometricInterpretation == "RGB"
        # The source's modality: OHIF opens its cine player over every "OT" series.
        assert image.Modality == source.Modality == "MR"


def test_image_rows_show_the_regions(written: Written) -> None:
    labels = sitk.GetArrayFromImage(written.labels)
    z = int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(axis=1)))
    tumour_slices = [s for s in range(labels.shape[0]) if labels[s].any()]
    image = read_images(written)[tumour_slices.index(z)]
    pixels = image.pixel_array.astype(int)
    pixels = pixels[pixels.shape[0] - labels.shape[1] :]
    # Inside oedema (away from its border) green dominates; outside the tumour, grey.
    oedema = (labels[z] == 2) & np.roll(labels[z] == 2, 2, 0) & np.roll(labels[z] == 2, -2, 0)
    rows, columns = np.nonzero(oedema)
    greenish = pixels[rows, columns]
    assert (greenish[:, 1] > greenish[:, 0]).mean() > 0.95
    row, column = 120, 128  # brain, no label in this slice there
    assert labels[z, row, column] == 0
    assert pixels[row, column, 0] == pixels[row, column, 1] == pixels[row, column, 2]


def test_sc_series_is_in_the_source_study_with_the_configured_series(
    written: Written, t1c: T1cCase
) -> None:
    source = pydicom.dcmread(t1c.files[0], stop_before_pixels=True)
    for image in read_images(written):
        assert image.StudyInstanceUID == source.StudyInstanceUID
        assert image.PatientID == source.PatientID
        assert image.SeriesNumber == written.settings.sc_series_number
        assert image.SeriesDescription == series_description(written.settings, "sc")
        assert image.Manufacturer == written.settings.manufacturer


def test_empty_result_still_gives_one_labelled_image(written_empty: Written, t1c: T1cCase) -> None:
    (image,) = read_images(written_empty)
    middle = len(t1c.volume.slices) // 2
    assert (
        image.SourceImageSequence[0].ReferencedSOPInstanceUID
        == t1c.volume.slices[middle].sop_instance_uid
    )
    want = expected(t1c, written_empty.labels, QualityReport())
    assert "no tumour segmented" in [item.text for item in want.layouts[0].items]
    np.testing.assert_array_equal(
        image.pixel_array[: want.band_rows], draw_band(want.layouts[0], want.band_rows)
    )
