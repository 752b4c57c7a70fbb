"""Secondary captures: valid RGB images of the tumour slices with the warning burned in."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segnode.pipeline.outputs.provenance import series_description
from tests.pipeline.outputs.dicom_checks import T1cCase, Written, dciodvfy, unexpected_warnings


def read_images(written: Written) -> list[pydicom.Dataset]:
    images = [pydicom.dcmread(obj.path) for obj in written.record.of_kind("sc")]
    return sorted(images, key=lambda image: int(image.InstanceNumber))


@pytest.mark.parametrize("variant", ["written", "written_empty"])
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


def test_images_show_the_regions_and_the_warning(written: Written) -> None:
    labels = sitk.GetArrayFromImage(written.labels)
    z = int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(axis=1)))
    images = read_images(written)
    tumour_slices = [s for s in range(labels.shape[0]) if labels[s].any()]
    image = images[tumour_slices.index(z)]
    assert image.PhotometricInterpretation == "RGB"
    assert image.BurnedInAnnotation == "YES"
    pixels = image.pixel_array.astype(int)
    assert pixels.shape == (*labels.shape[1:], 3)
    # The burned-in warning: red text on black in the top-left corner.
    corner = pixels[:16, :120]
    assert ((corner[..., 0] > 200) & (corner[..., 1] < 100)).sum() > 50
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
        assert (
            image.SeriesDescription
            == series_description(written.settings, "sc")
        )
        assert image.Manufacturer == written.settings.manufacturer


def test_empty_result_still_gives_one_labelled_image(written_empty: Written, t1c: T1cCase) -> None:
    (image,) = read_images(written_empty)
    middle = len(t1c.volume.slices) // 2
    assert (
        image.SourceImageSequence[0].ReferencedSOPInstanceUID
        == t1c.volume.slices[middle].sop_instance_uid
    )
