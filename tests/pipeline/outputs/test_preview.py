"""The dashboard's result preview: key T1c slices with the regions drawn, and their index.

Real T1c (TCGA-FG-6692's post-contrast series) with the synthetic label map the other
writer tests use (``synthetic_labels``: no real label exists on this series' grid).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from segnode.config.settings import ResultSeriesSettings
from segnode.pipeline.outputs import write_results
from segnode.pipeline.outputs.regions import REGION_COLOURS_RGB
from segnode.pipeline.quality.record import QualityReport
from segnode.vocabulary import Region
from tests.pipeline.outputs.dicom_checks import FLAGGED, PROVENANCE, T1cCase


def _preview(t1c: T1cCase, labels: sitk.Image, out: Path, quality: QualityReport | None = None) -> dict:
    (out / "outputs").mkdir(parents=True)
    write_results(
        t1c.files, t1c.volume.slices, labels, 4, PROVENANCE, ResultSeriesSettings(), ["seg"],
        out / "outputs", quality, preview_dir=out / "preview",
    )
    return json.loads((out / "preview" / "preview.json").read_text())


def test_the_preview_shows_the_largest_tumour_slice_first_with_the_regions_in_their_colours(
    t1c: T1cCase, labels: sitk.Image, tmp_path: Path
) -> None:
    index = _preview(t1c, labels, tmp_path, FLAGGED)
    array = sitk.GetArrayFromImage(labels)  # (slice, row, column), BraTS labels 1/2/4
    areas = (array > 0).reshape(array.shape[0], -1).sum(axis=1)
    images = index["images"]
    assert 1 <= len(images) <= 3
    assert images[0]["slice_index"] == int(np.argmax(areas))
    assert len({image["slice_index"] for image in images}) == len(images)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000
    assert index["volumes_ml"]["WT"] == pytest.approx((array > 0).sum() * voxel_ml, abs=0.01)
    assert index["volumes_ml"]["ET"] == pytest.approx((array == 4).sum() * voxel_ml, abs=0.01)
    assert index["review_recommended"] is True and len(index["flags"]) == len(FLAGGED.flags)
    for image in images:
        picture = np.asarray(Image.open(tmp_path / "preview" / image["file"]).convert("RGB"))
        plane = array[image["slice_index"]]
        assert picture.shape == (*plane.shape, 3)  # the T1c's own rows and columns
        assert image["sop_instance_uid"] == t1c.volume.slices[image["slice_index"]].sop_instance_uid
        outside = picture[plane == 0]
        assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()  # grey
        for label, region in ((1, Region.NCR), (2, Region.ED), (4, Region.ET)):
            if (plane == label).any():
                tinted = picture[plane == label].astype(int)
                colour = np.asarray(REGION_COLOURS_RGB[region])
                # Every pixel of the region is pulled towards its colour: not grey any more.
                assert (np.abs(tinted - tinted.mean(axis=1, keepdims=True)).max(axis=1) > 0).all()
                strongest, weakest = int(np.argmax(colour)), int(np.argmin(colour))
                assert tinted[:, strongest].mean() > tinted[:, weakest].mean() + 20


def test_an_empty_result_previews_the_middle_slice(t1c: T1cCase, tmp_path: Path) -> None:
    shape = sitk.GetArrayFromImage(t1c.volume.image).shape
    empty = sitk.GetImageFromArray(np.zeros(shape, dtype=np.uint8))
    empty.CopyInformation(t1c.volume.image)
    index = _preview(t1c, empty, tmp_path)
    assert [image["slice_index"] for image in index["images"]] == [shape[0] // 2]
    assert index["volumes_ml"]["WT"] == 0 and index["review_recommended"] is False
