"""Training augmentation of Myronenko 2018 (section 3.7), in numpy with an explicit Generator.

Random crop (160×192×128 in the paper), a random intensity shift of ±0.1 channel std and
scale of 0.9-1.1 per channel, and a random flip of each axis with probability 0.5.
Sampling (:func:`sample_augmentation`) is apart from applying (:func:`apply_augmentation`),
as in TorchIO's Random*/deterministic pairs: the parameters are a plain value that can be
logged and replayed, and a seed gives the same crops on every machine.

One addition to the paper, off by default: ``foreground_probability`` centres that share of
crops on a random tumour voxel. The paper's 160×192×128 crop holds most of a brain; the
smaller crops a CPU can afford (96³, 128³) often hold no tumour at all, and then the Dice
term gives no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PAPER_CROP = (160, 192, 128)
SHIFT_STD_FRACTION = 0.1
SCALE_RANGE = (0.9, 1.1)
FLIP_PROBABILITY = 0.5

Shape3 = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class AugmentationParams:
    """One draw of the random augmentation for a (C, X, Y, Z) image."""

    crop_start: Shape3
    """Corner of the crop in the padded volume, in voxels."""
    crop_size: Shape3
    padding: tuple[tuple[int, int], ...]
    """(before, after) zero padding per spatial axis, applied before cropping."""
    flips: tuple[bool, bool, bool]
    shifts: tuple[float, ...]
    """Added to each channel, in that channel's intensity units (fraction · std)."""
    scales: tuple[float, ...]


def padding_for(shape: Shape3, size: Shape3) -> tuple[tuple[int, int], ...]:
    """Centred zero padding that makes every axis at least ``size``."""
    pads = []
    for have, want in zip(shape, size, strict=True):
        missing = max(0, want - have)
        pads.append((missing // 2, missing - missing // 2))
    return tuple(pads)


def pad_and_crop(
    array: np.ndarray, padding: tuple[tuple[int, int], ...], start: Shape3, size: Shape3
) -> np.ndarray:
    """Zero-pad the last three axes, then cut ``size`` voxels from ``start``."""
    if any(before or after for before, after in padding):
        lead = [(0, 0)] * (array.ndim - 3)
        array = np.pad(array, [*lead, *padding])
    index: tuple[Any, ...] = (..., *(slice(s, s + n) for s, n in zip(start, size, strict=True)))
    return array[index]


def flip_axes(array: np.ndarray, flips: tuple[bool, bool, bool]) -> np.ndarray:
    """Flip the chosen spatial axes (the last three)."""
    axes = tuple(array.ndim - 3 + axis for axis, flip in enumerate(flips) if flip)
    return np.flip(array, axis=axes) if axes else array


def shift_and_scale(
    image: np.ndarray, shifts: tuple[float, ...], scales: tuple[float, ...]
) -> np.ndarray:
    """``image[c] * scales[c] + shifts[c]`` for each channel, as float32."""
    scale = np.asarray(scales, dtype=np.float32).reshape(-1, 1, 1, 1)
    shift = np.asarray(shifts, dtype=np.float32).reshape(-1, 1, 1, 1)
    out: np.ndarray = image.astype(np.float32) * scale + shift
    return out


def channel_std(image: np.ndarray) -> tuple[float, ...]:
    """Std of each channel over its non-zero voxels (1 after z-scoring; 1 if empty)."""
    stds = []
    for channel in image:
        values = channel[channel != 0]
        stds.append(float(values.std()) if values.size else 1.0)
    return tuple(stds)


def _foreground_starts(
    regions: np.ndarray,
    rng: np.random.Generator,
    padding: tuple[tuple[int, int], ...],
    padded: list[int],
    crop_size: Shape3,
) -> list[int]:
    """Crop corner that centres the crop (as far as the volume allows) on a random WT voxel."""
    voxels = np.flatnonzero(regions[0])
    centre = np.unravel_index(voxels[int(rng.integers(voxels.size))], regions.shape[1:])
    return [
        int(np.clip(c + before - n // 2, 0, p - n))
        for c, (before, _), p, n in zip(centre, padding, padded, crop_size, strict=True)
    ]


def sample_augmentation(
    image: np.ndarray,
    rng: np.random.Generator,
    crop_size: Shape3 = PAPER_CROP,
    regions: np.ndarray | None = None,
    foreground_probability: float = 0.0,
) -> AugmentationParams:
    """Draw crop corner, flips, shifts and scales for a (C, X, Y, Z) image.

    Args:
        image: (C, X, Y, Z), normalised.
        rng: the run's generator (the only source of randomness).
        crop_size: voxels per axis; smaller volumes are zero-padded to it.
        regions: (3, X, Y, Z) WT, TC, ET, needed for foreground crops only.
        foreground_probability: share of crops centred on a tumour voxel (0: the paper).
    """
    spatial = image.shape[1:]
    if len(spatial) != 3:
        raise ValueError(f"expected a (C, X, Y, Z) image, got shape {image.shape}")
    if not 0.0 <= foreground_probability <= 1.0:
        raise ValueError(f"foreground_probability {foreground_probability} not in [0, 1]")
    shape: Shape3 = (int(spatial[0]), int(spatial[1]), int(spatial[2]))
    padding = padding_for(shape, crop_size)
    padded = [have + before + after for have, (before, after) in zip(shape, padding, strict=True)]
    # Draw the coin only when asked to, so the default keeps the paper's random sequence.
    if (
        foreground_probability > 0
        and regions is not None
        and bool(regions[0].any())
        and rng.random() < foreground_probability
    ):
        starts = _foreground_starts(regions, rng, padding, padded, crop_size)
    else:
        starts = [int(rng.integers(0, p - n + 1)) for p, n in zip(padded, crop_size, strict=True)]
    flips = [bool(rng.random() < FLIP_PROBABILITY) for _ in range(3)]
    channels = image.shape[0]
    fractions = np.asarray(rng.uniform(-SHIFT_STD_FRACTION, SHIFT_STD_FRACTION, size=channels))
    scales = np.asarray(rng.uniform(SCALE_RANGE[0], SCALE_RANGE[1], size=channels))
    shifts = [float(f) * std for f, std in zip(fractions, channel_std(image), strict=True)]
    return AugmentationParams(
        crop_start=(starts[0], starts[1], starts[2]),
        crop_size=crop_size,
        padding=padding,
        flips=(flips[0], flips[1], flips[2]),
        shifts=tuple(shifts),
        scales=tuple(float(s) for s in scales),
    )


def apply_augmentation(
    image: np.ndarray, regions: np.ndarray | None, params: AugmentationParams
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop, flip (image and regions alike), then shift and scale the image's intensities."""
    cropped = pad_and_crop(image, params.padding, params.crop_start, params.crop_size)
    augmented = shift_and_scale(flip_axes(cropped, params.flips), params.shifts, params.scales)
    if regions is None:
        return np.ascontiguousarray(augmented), None
    region_crop = pad_and_crop(regions, params.padding, params.crop_start, params.crop_size)
    return np.ascontiguousarray(augmented), np.ascontiguousarray(
        flip_axes(region_crop, params.flips)
    )


def random_augmentation(
    image: np.ndarray,
    regions: np.ndarray | None,
    rng: np.random.Generator,
    crop_size: Shape3 = PAPER_CROP,
    foreground_probability: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None, AugmentationParams]:
    """Sample and apply in one call; returns the parameters for the training record."""
    params = sample_augmentation(image, rng, crop_size, regions, foreground_probability)
    augmented, augmented_regions = apply_augmentation(image, regions, params)
    return augmented, augmented_regions, params
