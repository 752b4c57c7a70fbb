"""Intensity normalisation: z-score each channel over brain voxels.

Myronenko 2018, section 3.7: each input channel is normalised to zero mean and
unit standard deviation over the non-zero (brain) voxels; background stays 0.
"""

from __future__ import annotations

import numpy as np

from segnode.pipeline.errors import PipelineError


def zscore_over_mask(voxels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Normalised voxels (0 outside the mask), with the mean and std used."""
    inside = mask.astype(bool)
    if not inside.any():
        raise PipelineError("z-score normalisation: the brain mask is empty")
    values = voxels[inside].astype(np.float64)
    mean, std = float(values.mean()), float(values.std())
    if std == 0.0:
        raise PipelineError("z-score normalisation: the channel is constant inside the brain")
    normalised = np.zeros_like(voxels, dtype=np.float32)
    normalised[inside] = ((values - mean) / std).astype(np.float32)
    return normalised, mean, std
