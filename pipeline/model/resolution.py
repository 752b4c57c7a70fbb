"""Moving volumes between the node's 1 mm grid and a model's coarser grid (2 mm recipes).

Down: the mean of each ``factor``³ block (zero padding first, so every axis divides), which
is what a 2 mm acquisition of the same brain would record and keeps partial-volume fractions
for the regions. Up: trilinear interpolation of probabilities with ``align_corners=False``,
which puts each coarse value at the centre of the block it came from. Training, validation
and inference all call these two functions, so the model sees in use what it saw in training.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as functional

from segnode.pipeline.errors import InferenceError


def spacing_factor(model_spacing_mm: float, image_spacing_mm: float = 1.0) -> int:
    """Integer block size between the image grid and the model's (1 for a 1 mm model)."""
    ratio = model_spacing_mm / image_spacing_mm
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 1e-6:
        raise InferenceError(
            f"model spacing {model_spacing_mm} mm is not a whole multiple of the image's "
            f"{image_spacing_mm} mm"
        )
    return factor


def coarse_shape(shape: tuple[int, ...], factor: int) -> tuple[int, ...]:
    return tuple(-(-size // factor) for size in shape)


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """(..., X, Y, Z) -> (..., ceil(X/f), ceil(Y/f), ceil(Z/f)) float32 block means."""
    if factor == 1:
        return np.asarray(volume, dtype=np.float32)
    spatial = volume.shape[-3:]
    pad = [(0, 0)] * (volume.ndim - 3) + [(0, -size % factor) for size in spatial]
    padded = np.pad(np.asarray(volume, dtype=np.float32), pad)
    lead = padded.shape[:-3]
    x, y, z = coarse_shape(spatial, factor)
    blocks = padded.reshape(*lead, x, factor, y, factor, z, factor)
    result: np.ndarray = blocks.mean(axis=(-5, -3, -1), dtype=np.float32)
    return result


def upsample(probabilities: torch.Tensor, factor: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, x, y, z) coarse probabilities -> (B, C, *shape) on the fine grid (trilinear)."""
    if factor == 1:
        return probabilities
    fine = functional.interpolate(
        probabilities, scale_factor=float(factor), mode="trilinear", align_corners=False
    )
    if any(have < want for have, want in zip(fine.shape[2:], shape, strict=True)):
        raise InferenceError(f"upsampled {tuple(fine.shape[2:])} is smaller than {shape}")
    return fine[..., : shape[0], : shape[1], : shape[2]]
