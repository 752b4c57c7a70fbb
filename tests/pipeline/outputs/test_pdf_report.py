"""The encapsulated PDF summary: valid, in the source study, a real PDF without patient identity.

The page is drawn by Pillow, so its words are pixels, not extractable text: the layout tests
read the texts the page was drawn with (``RenderedPage.items``) and check each one left ink
where the layout says, that none lies on the key image, and that the key image is the
rendered slice exactly.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segnode.pipeline.outputs.annotation_text import format_ml
from segnode.pipeline.outputs.pdf_report import (
    BANNER,
    CALM_BOX,
    MIN_KEY_IMAGE_PX,
    PAGE_PX,
    REVIEW_BOX,
    RenderedPage,
    key_image,
    key_slice,
    render_page,
)
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
from segnode.pipeline.outputs.source import load_source_series
from segnode.pipeline.quality.record import QaCheck, QaFlag, QualityReport
from segnode.vocabulary import ALL_REGIONS, BASE_REGIONS, Region
from tests.fixtures.dicom_study import PatientTags
from tests.pipeline.outputs.dicom_checks import (
    FLAGGED,
    PROVENANCE,
    T1cCase,
    Written,
    dciodvfy,
    unexpected_warnings,
)


def read_pdf(written: Written) -> pydicom.Dataset:
    (obj,) = written.record.of_kind("pdf")
    return pydicom.dcmread(obj.path)


def page_of(t1c: T1cCase, labels: sitk.Image, quality: QualityReport) -> RenderedPage:
    convention = convention_of(4)
    masks = region_masks(label_array(labels, convention), convention)
    statistics = region_statistics(masks, voxel_volume_mm3(labels))
    source = load_source_series(t1c.files, t1c.volume.slices)
    return render_page(source, masks, statistics, PROVENANCE, convention, quality)


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


@pytest.mark.parametrize("variant", ["written", "written_empty", "written_flagged"])
def test_pdf_passes_dciodvfy(variant: str, request: pytest.FixtureRequest) -> None:
    written: Written = request.getfixturevalue(variant)
    (obj,) = written.record.of_kind("pdf")
    validation = dciodvfy(obj.path)
    assert validation.errors == []
    assert unexpected_warnings(validation) == []


def test_pdf_is_encapsulated_in_the_source_study(written: Written, t1c: T1cCase) -> None:
    dataset = read_pdf(written)
    source = pydicom.dcmread(t1c.files[0], stop_before_pixels=True)
    assert dataset.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert dataset.PatientID == source.PatientID
    assert dataset.Modality == "DOC"
    assert dataset.SeriesNumber == written.settings.pdf_series_number
    assert dataset.SeriesDescription == series_description(written.settings, "pdf")
    assert dataset.MIMETypeOfEncapsulatedDocument == "application/pdf"
    sources = {item.ReferencedSOPInstanceUID for item in dataset.SourceInstanceSequence}
    assert sources == {ref.sop_instance_uid for ref in t1c.volume.slices}


def test_document_is_a_one_page_pdf_without_patient_identity(
    written: Written, written_flagged: Written
) -> None:
    for variant, headline in ((written, "No quality flag raised"), (written_flagged, "REVIEW")):
        dataset = read_pdf(variant)
        document = bytes(dataset.EncapsulatedDocument)[: dataset.EncapsulatedDocumentLength]
        assert document.startswith(b"%PDF-")
        assert document.rstrip().endswith(b"%%EOF")
        assert b"/Count 1" in document
        # The searchable part: the subject names the intended use and the quality headline.
        # (Pillow writes the document information strings as UTF-16BE with a byte-order mark.)
        subject = "\ufeffNOT FOR CLINICAL USE. " + headline
        assert b"/Subject (" + subject.encode("utf-16-be") in document
        patient = PatientTags()
        for value in (
            patient.patient_name,
            patient.patient_id,
            patient.accession_number,
            "MUSTERMANN",
        ):
            assert value.encode() not in document
            assert value.encode("utf-16-be") not in document
        assert dataset.BurnedInAnnotation == "NO"


@pytest.mark.parametrize("quality", [QualityReport(), FLAGGED], ids=["clean", "flagged"])
def test_key_image_is_the_slice_with_no_text_over_it(
    quality: QualityReport, t1c: T1cCase, labels: sitk.Image
) -> None:
    page = page_of(t1c, labels, quality)
    pixels = np.asarray(page.image)
    convention = convention_of(4)
    masks = region_masks(label_array(labels, convention), convention)
    wt = masks[Region.WT]
    assert (
        page.key_index == key_slice(wt) == int(np.argmax(wt.reshape(wt.shape[0], -1).sum(axis=1)))
    )
    left, top, right, bottom = page.key_image
    assert bottom - top + 1 >= MIN_KEY_IMAGE_PX
    source = load_source_series(t1c.files, t1c.volume.slices)
    want = key_image(source, masks, page.key_index, (right - left + 1, bottom - top + 1))
    np.testing.assert_array_equal(pixels[top : bottom + 1, left : right + 1], np.asarray(want))
    for item in page.items:
        assert not overlaps(item.box, page.key_image), item.text
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 and x1 < PAGE_PX[0] and 0 <= y0 and y1 < PAGE_PX[1], item.text
        assert len(np.unique(pixels[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3), axis=0)) > 2, (
            item.text  # the text left ink where the layout put it
        )


def test_page_says_warning_slice_volumes_quality_and_provenance(
    t1c: T1cCase, labels: sitk.Image, written: Written
) -> None:
    page = page_of(t1c, labels, FLAGGED)
    texts = page.texts()
    joined = " ".join(texts)
    assert "NOT FOR CLINICAL USE" in texts
    pixels = np.asarray(page.image)
    x0, y0, x1, y1 = page.banner
    assert (pixels[y0 : y1 + 1, x0 : x1 + 1] == BANNER).all(axis=-1).mean() > 0.6
    source = load_source_series(t1c.files, t1c.volume.slices)
    number = int(source.instance_of(page.key_index).InstanceNumber)
    assert any(text.startswith(f"Key image: T1c image {number},") for text in texts)
    statistics = written.record.statistics
    for region in ALL_REGIONS:
        assert REGION_NAMES[region] in texts
        assert format_ml(statistics[region].volume_ml) in texts
    assert "Quality" in texts and FLAGGED.headline in texts
    for flag in FLAGGED.flags:
        assert flag.title in texts
        assert flag.summary in joined
    assert f"model sha256 {PROVENANCE.model_sha256}" in texts
    assert f"{PROVENANCE.algorithm_name} {PROVENANCE.algorithm_version}" in texts


def test_legend_swatches_and_the_headline_box_have_their_colours(
    t1c: T1cCase, labels: sitk.Image
) -> None:
    for quality, box_colour in ((FLAGGED, REVIEW_BOX), (QualityReport(), CALM_BOX)):
        page = page_of(t1c, labels, quality)
        pixels = np.asarray(page.image)
        assert [colour for _, colour in page.swatches] == [
            REGION_COLOURS_RGB[region] for region in BASE_REGIONS
        ]
        for (left, top, right, bottom), colour in page.swatches:
            assert (pixels[top + 2 : bottom - 1, left + 2 : right - 1] == colour).all()
        left, top, right, bottom = page.quality_headline
        assert (pixels[top + 2 : bottom - 1, left + 2 : right - 1] == box_colour).all(
            axis=-1
        ).mean() > 0.7


def test_many_flags_keep_the_key_image_readable(t1c: T1cCase, labels: sitk.Image) -> None:
    many = QualityReport(
        flags=tuple(
            QaFlag(check=check, summary="a long sentence about what this check measured " * 3)
            for check in QaCheck
        ),
        checked=tuple(QaCheck),
    )
    page = page_of(t1c, labels, many)
    left, top, right, bottom = page.key_image
    assert bottom - top + 1 >= MIN_KEY_IMAGE_PX
    assert page.omitted_flags > 0
    assert any(text.endswith("more flags: see the SR in this study") for text in page.texts())
    for item in page.items:
        assert not overlaps(item.box, page.key_image), item.text


def test_empty_result_names_the_shown_slice(t1c: T1cCase, written_empty: Written) -> None:
    page = page_of(t1c, written_empty.labels, QualityReport())
    source = load_source_series(t1c.files, t1c.volume.slices)
    middle = len(t1c.volume.slices) // 2
    number = int(source.instance_of(middle).InstanceNumber)
    assert f"No tumour segmented; T1c image {number} shown" in page.texts()
    assert "0.00 ml" in page.texts()
