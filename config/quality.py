"""``[quality]``: the limits of the quality checks (``segnode.pipeline.quality``).

Why these defaults: they bracket the data the shipped models were trained on (BraTS: whole-head
MR, slices up to about 6 mm apart before resampling, adult brains of 0.9-1.9 l after brain
extraction) and what a reader notices (an overlay 2 mm off the lesion's edge shows). A site
tunes them to its own protocols; every figure the checks compared is in the job's
``quality.json``, so a limit can be set from what the node measured.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from segnode.config.fields import Section

Positive = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(gt=0, le=1)]


class QualitySettings(Section):
    """Limits above (or outside) which a quality check raises its flag."""

    max_motion_mm: Positive = 2.0
    """Inter-series motion found by registration: displacement at the brain's centre."""
    max_rotation_deg: Positive = 2.0
    """Inter-series motion: the registration's rotation angle."""
    max_slice_spacing_mm: Positive = 6.0
    """Distance between a series' slices (its thickest axis)."""
    min_extent_mm: Positive = 100.0
    """A series must cover at least this along every axis (a whole head is ~140 x 170 x 120 mm)."""
    max_extent_mm: Positive = 350.0
    """... and at most this (a body-coil field of view is not a head)."""
    min_brain_ml: Positive = 700.0
    max_brain_ml: Positive = 2100.0
    """Brain extraction's volume outside this range: the input may not be an adult brain."""
    max_tta_volume_spread: Share = 0.3
    """A region's single-pass volumes differ by more than this share of the largest."""
    max_tta_disagreement: Share = 0.6
    """Share of a region's voxels that not every pass puts in it. Boundary voxels are always
    disputed, so thin regions score high on ordinary input: TCGA-FG-6692 (an input like the
    training data) gives WT 0.29, TC 0.27, ET 0.45, with single-pass volumes 10, 12 and 20 %
    apart (segnode-brats22-v1, 8 flips, 2026-12-03)."""
    min_region_ml: Positive = 1.0
    """Regions smaller than this (in every pass) are not judged on TTA agreement: a few voxels'
    difference is a large share of nothing."""

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        if self.min_extent_mm >= self.max_extent_mm:
            raise ValueError("quality.min_extent_mm must be below max_extent_mm")
        if self.min_brain_ml >= self.max_brain_ml:
            raise ValueError("quality.min_brain_ml must be below max_brain_ml")
        return self
