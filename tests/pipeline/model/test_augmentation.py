"""Augmentation: same seed, same result; shapes, padding, ranges, and labels that follow the image."""

from __future__ import annotations

import numpy as np
import pytest

from segnode.pipeline.training.augmentation import (
    AugmentationParams,
    apply_augmentation,
    flip_axes,
    pad_and_crop,
    padding_for,
    random_augmentation,
    sample_augmentation,
)


def synthetic_case(shape: tuple[int, int, int] = (20, 24, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A made-up 4-channel volume (distinct value per voxel) and a region map thresholded from it."""
    rng = np.random.default_rng(123)
    image = rng.normal(size=(4, *shape)).astype(np.float32)
    regions = np.stack([image[0] > t for t in (0.0, 0.5, 1.0)])
    return image, regions


def test_same_seed_same_crop_flips_and_intensities() -> None:
    image, regions = synthetic_case()
    first = random_augmentation(image, regions, np.random.default_rng(5), (16, 16, 16))
    second = random_augmentation(image, regions, np.random.default_rng(5), (16, 16, 16))
    assert first[2] == second[2]
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    other = random_augmentation(image, regions, np.random.default_rng(6), (16, 16, 16))
    assert other[2] != first[2]


def test_shapes_and_padding_when_the_volume_is_smaller_than_the_crop() -> None:
    image, regions = synthetic_case((20, 24, 12))
    out, out_regions, params = random_augmentation(
        image, regions, np.random.default_rng(0), (16, 16, 16)
    )
    assert out.shape == (4, 16, 16, 16) and out.dtype == np.float32
    assert out_regions is not None and out_regions.shape == (3, 16, 16, 16)
    assert out_regions.dtype == bool
    assert params.padding == ((0, 0), (0, 0), (2, 2))  # z: 12 -> 16, centred
    assert out.flags.c_contiguous and out_regions.flags.c_contiguous


def test_pad_and_crop_by_hand() -> None:
    array = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    padding = padding_for((3, 4, 5), (4, 4, 4))
    assert padding == ((0, 1), (0, 0), (0, 0))
    out = pad_and_crop(array, padding, (1, 0, 1), (3, 4, 4))
    np.testing.assert_array_equal(out[:, :2], array[:, 1:3, :, 1:5])
    assert np.all(out[:, 2] == 0)  # the padded slice


def test_flip_twice_is_identity_and_flips_only_spatial_axes() -> None:
    image, _ = synthetic_case()
    flipped = flip_axes(image, (True, False, True))
    np.testing.assert_array_equal(flipped[2], image[2, ::-1, :, ::-1])
    np.testing.assert_array_equal(flip_axes(flipped, (True, False, True)), image)


def test_regions_follow_the_image_through_crop_and_flip() -> None:
    image, regions = synthetic_case()
    params = AugmentationParams(
        crop_start=(3, 5, 0),
        crop_size=(16, 16, 16),
        padding=padding_for((20, 24, 12), (16, 16, 16)),
        flips=(True, True, False),
        shifts=(0.1, 0.0, 0.0, 0.0),
        scales=(2.0, 1.0, 1.0, 1.0),
    )
    out, out_regions = apply_augmentation(image, regions, params)
    assert out_regions is not None
    original = (out[0] - 0.1) / 2.0  # undo the intensity change of channel 0
    inside = np.abs(original) > 1e-6  # not padding
    np.testing.assert_array_equal(out_regions[0][inside], (original > 0)[inside])
    np.testing.assert_array_equal(out_regions[2][inside], (original > 1.0)[inside])
    assert not out_regions[:, ~inside].any()


def test_intensity_parameters_stay_in_the_papers_ranges() -> None:
    image, _ = synthetic_case()
    stds = [float(c[c != 0].std()) for c in image]
    rng = np.random.default_rng(0)
    draws = [sample_augmentation(image, rng, (16, 16, 16)) for _ in range(200)]
    scales = np.array([d.scales for d in draws])
    shifts = np.array([d.shifts for d in draws]) / np.array(stds)
    assert scales.min() >= 0.9 and scales.max() <= 1.1
    assert np.abs(shifts).max() <= 0.1 + 1e-9
    flips = np.array([d.flips for d in draws])
    assert flips.mean() == pytest.approx(0.5, abs=0.1)  # p = 0.5 per axis
    starts = np.array([d.crop_start for d in draws])
    assert starts.min(axis=0).tolist() == [0, 0, 0]
    assert starts.max(axis=0).tolist() == [4, 8, 0]  # 20-16, 24-16, padded z


def test_image_without_regions() -> None:
    image, _ = synthetic_case()
    out, out_regions, _ = random_augmentation(image, None, np.random.default_rng(1), (16, 16, 16))
    assert out.shape == (4, 16, 16, 16) and out_regions is None


def test_foreground_crops_hold_tumour_and_the_default_keeps_the_papers_draws() -> None:
    image, _ = synthetic_case((40, 40, 40))
    regions = np.zeros((3, 40, 40, 40), dtype=bool)
    regions[:, 30:33, 2:4, 35:37] = True  # a small tumour near a corner
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, crop_regions, _ = random_augmentation(image, regions, rng, (16, 16, 16), 1.0)
        assert crop_regions is not None and crop_regions[0].any()
    # Probability 0 draws exactly what the paper's uniform crop draws.
    uniform = sample_augmentation(image, np.random.default_rng(9), (16, 16, 16))
    same = sample_augmentation(image, np.random.default_rng(9), (16, 16, 16), regions, 0.0)
    assert uniform == same
    with pytest.raises(ValueError, match="foreground_probability"):
        sample_augmentation(image, rng, (16, 16, 16), regions, 1.5)
