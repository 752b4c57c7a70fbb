"""Brain extraction on a real unregistered head scan, plus synthetic edge cases.

The real case is TCGA-FG-6692's native Siemens T1c (0.9x0.9x5.5 mm, 26 slices,
not skull-stripped). One extraction is shared by the module, because each
takes a few seconds on CPU. Synthetic inputs are marked as such.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segnode.pipeline.brain_extraction import (
    BrainMask,
    apply_mask,
    check_plausible_volume,
    extract_brain,
    load_brain_extractor,
    mask_onto_grid,
    to_nifti,
    volume_ml,
)
from segnode.pipeline.errors import BrainExtractionError
from tests.helpers import SHARED_DATA, require_shared_data

NATIVE_T1C = SHARED_DATA / "nifti" / "TCGA-FG-6692_native_siemens" / "t1c.nii.gz"
SRI24_T1C = SHARED_DATA / "nifti" / "TCGA-FG-6692_sri24_skullstripped" / "t1c.nii.gz"


def read(path: Path) -> sitk.Image:
    require_shared_data()
    if not path.is_file():
        pytest.fail(f"shared data is present but {path} is missing; restore ../shared/data")
    return sitk.ReadImage(str(path))


@pytest.fixture(scope="module")
def native_t1c() -> sitk.Image:
    return read(NATIVE_T1C)


@pytest.fixture(scope="module")
def extracted(native_t1c: sitk.Image) -> BrainMask:
    return extract_brain(native_t1c)


def synthetic_image(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> sitk.Image:
    """SYNTHETIC: seeded noise with an oblique direction, for geometry checks."""
    voxels = np.random.default_rng(0).normal(100.0, 30.0, size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 40.0, -7.25))
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.1, -0.2, 0.3)
    image.SetDirection(rotation.GetMatrix())
    return image


def test_native_t1c_volume_within_acceptance_bound(extracted: BrainMask) -> None:
    assert 1100.0 <= extracted.volume_ml <= 1900.0, f"brain volume {extracted.volume_ml:.0f} ml"


def test_mask_is_on_the_input_grid_exactly(native_t1c: sitk.Image, extracted: BrainMask) -> None:
    mask = extracted.mask
    assert mask.GetSize() == native_t1c.GetSize()
    assert mask.GetOrigin() == native_t1c.GetOrigin()
    assert mask.GetSpacing() == native_t1c.GetSpacing()
    assert mask.GetDirection() == native_t1c.GetDirection()
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(mask)).tolist()) == {0, 1}


def test_volume_agrees_with_the_skull_stripped_sri24_version(extracted: BrainMask) -> None:
    """The SRI24 copy is rigidly registered and skull-stripped: its non-zero voxels are the brain."""
    sri24 = read(SRI24_T1C)
    reference_ml = volume_ml(sitk.Cast(sri24 != 0, sitk.sitkUInt8))
    ratio = extracted.volume_ml / reference_ml
    print(
        f"deepbet native T1c {extracted.volume_ml:.0f} ml; SRI24 skull-stripped {reference_ml:.0f} ml"
    )
    assert 0.8 <= ratio <= 1.2, (
        f"deepbet {extracted.volume_ml:.0f} ml vs SRI24 skull-stripped {reference_ml:.0f} ml "
        f"(ratio {ratio:.2f})"
    )


def test_provenance_record_is_json_and_names_the_tool(extracted: BrainMask) -> None:
    record = json.loads(json.dumps(extracted.as_record()))
    assert record["tool"].startswith("deepbet ")
    assert record["threshold"] == 0.5
    assert record["device"] == "cpu"
    assert record["volume_ml"] == extracted.volume_ml
    assert extracted.seconds > 0.0


def test_apply_mask_zeroes_outside_and_keeps_inside_exactly(
    native_t1c: sitk.Image, extracted: BrainMask
) -> None:
    brain = apply_mask(native_t1c, extracted.mask)
    original = sitk.GetArrayViewFromImage(native_t1c)
    masked = sitk.GetArrayViewFromImage(brain)
    inside = sitk.GetArrayViewFromImage(extracted.mask) == 1
    assert brain.GetPixelID() == native_t1c.GetPixelID()
    assert brain.GetSize() == native_t1c.GetSize()
    assert brain.GetOrigin() == native_t1c.GetOrigin()
    assert brain.GetDirection() == native_t1c.GetDirection()
    assert np.array_equal(masked[inside], original[inside])
    assert not masked[~inside].any()
    assert original[~inside].any(), "the scalp must have had signal for this test to mean anything"


def test_apply_mask_refuses_a_mask_on_another_grid(native_t1c: sitk.Image) -> None:
    """SYNTHETIC mask of the wrong size."""
    other = sitk.Image(64, 64, 26, sitk.sitkUInt8)
    with pytest.raises(BrainExtractionError, match="does not match the image grid"):
        apply_mask(native_t1c, other)


def test_constant_image_is_refused() -> None:
    """SYNTHETIC: an all-zero volume, as from a series that failed to decode."""
    blank = sitk.Image(128, 128, 40, sitk.sitkInt16)
    blank.SetSpacing((1.0, 1.0, 4.0))
    with pytest.raises(BrainExtractionError, match="constant"):
        extract_brain(blank)


def test_non_head_input_is_refused_and_threads_are_restored() -> None:
    """SYNTHETIC: a 64 mm cube of noise around a bright ball runs the model for real.

    Whatever deepbet makes of it, the mask cannot exceed 262 ml, so the step
    must refuse it; the torch thread count must survive the error.
    """
    threads_before = torch.get_num_threads()
    size = 64
    grid = np.indices((size, size, size)) - size / 2
    ball = (grid**2).sum(axis=0) < 15**2
    voxels = np.random.default_rng(1).normal(50.0, 10.0, ball.shape) + 400.0 * ball
    image = sitk.GetImageFromArray(voxels.astype(np.float32))
    with pytest.raises(BrainExtractionError, match=r"empty mask|implausible|deepbet failed"):
        extract_brain(image, num_threads=1)
    assert torch.get_num_threads() == threads_before


def test_mask_comes_back_on_the_input_grid_from_any_orientation() -> None:
    """SYNTHETIC oblique image: a mask returned in RAS-canonical order still lands in place."""
    image = synthetic_image((20, 16, 9), (0.9, 0.9, 5.5))
    mask = sitk.Cast(image > 100.0, sitk.sitkUInt8)
    canonical = nib.as_closest_canonical(to_nifti(mask))
    assert canonical.shape != to_nifti(mask).shape or not np.allclose(
        canonical.affine, to_nifti(mask).affine
    ), "the test needs an orientation that canonicalisation changes"
    back = mask_onto_grid(canonical, image)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(mask))
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()


def test_volume_uses_the_voxel_spacing() -> None:
    """SYNTHETIC: 1000 voxels of 1x1x2 mm are 2 ml."""
    mask = sitk.Image(20, 20, 20, sitk.sitkUInt8)
    mask.SetSpacing((1.0, 1.0, 2.0))
    mask[0:10, 0:10, 0:10] = 1
    assert volume_ml(mask) == pytest.approx(2.0)


@pytest.mark.parametrize("volume", [0.0, 120.0, 3100.0])
def test_implausible_volumes_are_refused_with_the_measured_volume(volume: float) -> None:
    expected = "empty mask" if volume == 0.0 else f"{volume:.0f} ml"
    with pytest.raises(BrainExtractionError, match=expected):
        check_plausible_volume(volume)


def test_bad_arguments_are_refused_before_any_work() -> None:
    image = synthetic_image((8, 8, 8), (1.0, 1.0, 1.0))
    with pytest.raises(BrainExtractionError, match="threshold"):
        extract_brain(image, threshold=1.5)
    with pytest.raises(BrainExtractionError, match="num_threads"):
        extract_brain(image, num_threads=0)


def test_model_is_loaded_once_per_process() -> None:
    assert load_brain_extractor("cpu") is load_brain_extractor("cpu")
