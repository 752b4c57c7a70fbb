"""The encapsulated PDF summary: valid, in the source study, a real PDF without patient identity."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from segnode.pipeline.outputs.pdf_report import key_slice, render_page
from segnode.pipeline.outputs.provenance import series_description
from segnode.pipeline.outputs.regions import (
    convention_of,
    label_array,
    region_masks,
    region_statistics,
)
from segnode.pipeline.outputs.source import load_source_series
from segnode.vocabulary import Region
from tests.fixtures.dicom_study import PatientTags
from tests.pipeline.outputs.dicom_checks import (
    PROVENANCE,
    T1cCase,
    Written,
    dciodvfy,
    unexpected_warnings,
)


def read_pdf(written: Written) -> pydicom.Dataset:
    (obj,) = written.record.of_kind("pdf")
    return pydicom.dcmread(obj.path)


@pytest.mark.parametrize("variant", ["written", "written_empty"])
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
    assert (
        dataset.SeriesDescription
        == series_description(written.settings, "pdf")
    )
    assert dataset.MIMETypeOfEncapsulatedDocument == "application/pdf"
    sources = {item.ReferencedSOPInstanceUID for item in dataset.SourceInstanceSequence}
    assert sources == {ref.sop_instance_uid for ref in t1c.volume.slices}


def test_document_is_a_one_page_pdf_without_patient_identity(written: Written) -> None:
    dataset = read_pdf(written)
    document = bytes(dataset.EncapsulatedDocument)[: dataset.EncapsulatedDocumentLength]
    assert document.startswith(b"%PDF-")
    assert document.rstrip().endswith(b"%%EOF")
    assert b"/Count 1" in document
    patient = PatientTags()
    for value in (patient.patient_name, patient.patient_id, patient.accession_number, "MUSTERMANN"):
        assert value.encode() not in document
    assert dataset.BurnedInAnnotation == "NO"


def test_page_shows_the_warning_banner_and_the_key_image(written: Written, t1c: T1cCase) -> None:
    convention = convention_of(4)
    masks = region_masks(label_array(written.labels, convention), convention)
    statistics = region_statistics(masks, 1.0)
    source = load_source_series(t1c.files, t1c.volume.slices)
    page = np.asarray(render_page(source, masks, statistics, PROVENANCE, convention)).astype(int)
    red = (page[..., 0] > 180) & (page[..., 1] < 40) & (page[..., 2] < 40)
    assert red[:400].sum() > 20_000  # the NOT FOR CLINICAL USE banner
    wt = masks[Region.WT]
    assert key_slice(wt) == int(np.argmax(wt.reshape(wt.shape[0], -1).sum(axis=1)))
    green = (page[..., 1] > 150) & (page[..., 0] < 120) & (page[..., 2] < 120)
    assert green[900:].sum() > 500  # the oedema in the key image
