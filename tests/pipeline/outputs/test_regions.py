"""Region masks and volumes: unions, conventions, voxel volume from the spacing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segnode.pipeline.outputs import OutputError, OutputSpecError, volumes_ml
from segnode.pipeline.outputs.regions import convention_of
from segnode.vocabulary import Region


def image(array: np.ndarray, spacing: tuple[float, float, float] = (0.5, 2.0, 3.0)) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(spacing)
    return result


@pytest.mark.parametrize("et_label", [4, 3])
def test_counts_and_unions_in_both_conventions(et_label: int) -> None:
    array = np.zeros((3, 4, 5), dtype=np.uint8)
    array[0, 0, :3] = 1  # 3 NCR
    array[1, :2, :] = 2  # 10 ED
    array[2, 3, :4] = et_label  # 4 ET
    statistics = volumes_ml(image(array), et_label)
    expected = {Region.NCR: 3, Region.ED: 10, Region.ET: 4, Region.TC: 7, Region.WT: 17}
    for region, count in expected.items():
        assert statistics[region].voxel_count == count
        assert statistics[region].volume_ml == pytest.approx(count * 3.0 / 1000)
    assert statistics.voxel_volume_mm3 == 3.0
    assert [v.region for v in statistics.volumes] == ["WT", "TC", "ET", "NCR", "ED"]
    assert not statistics.is_empty


def test_empty_map_has_zero_volumes() -> None:
    statistics = volumes_ml(image(np.zeros((2, 2, 2), dtype=np.uint8)), 4)
    assert statistics.is_empty
    assert all(v.voxel_count == 0 and v.volume_ml == 0 for v in statistics.volumes)


def test_undefined_labels_and_conventions_are_refused() -> None:
    array = np.zeros((2, 2, 2), dtype=np.uint8)
    array[0, 0, 0] = 3
    with pytest.raises(OutputError, match=r"values \[3\]"):
        volumes_ml(image(array), 4)
    with pytest.raises(OutputError, match="integer labels"):
        volumes_ml(image(array.astype(np.float32)), 3)
    with pytest.raises(OutputSpecError, match="neither 4"):
        convention_of(2)
