"""From four converted series to the network's input, and back to the source geometry.

The BraTS convention (Myronenko 2018, section 3.7; the BraTS preprocessing):
brain extraction on the unregistered T1c, rigid co-registration of T1, T2 and
FLAIR to the T1c (optionally the T1c to an atlas first), resampling of all four
onto one isotropic grid in canonical LPS orientation, masking, cropping to the
brain with a margin, and a z-score per channel over brain voxels. Each step's
parameters, metrics and timing go into ``record`` for the job's provenance.

The grid is derived from the T1c's physical space, so a label map computed on
it maps back onto the T1c source series with a nearest-neighbour resampling
(and the inverse atlas transform when an atlas was used): the DICOM-SEG then
lies exactly on the images the radiologist reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segnode.config.settings import PreprocessingSettings
from segnode.pipeline.brain_extraction import BrainMask, apply_mask, extract_brain, same_grid
from segnode.pipeline.conversion import ConvertedVolume
from segnode.pipeline.errors import PipelineError
from segnode.pipeline.intensity import zscore_over_mask
from segnode.pipeline.registration import isotropic_grid, register_rigid, resample_onto
from segnode.vocabulary import CHANNEL_ORDER, Role


@dataclass(frozen=True)
class PreprocessedStudy:
    """Four co-registered, skull-stripped, normalised channels on one cropped grid."""

    channels: dict[Role, np.ndarray]
    """Each (x, y, z) float32, z-scored over the brain, 0 outside."""
    brain_mask: np.ndarray
    """(x, y, z) uint8 on the same grid."""
    grid: sitk.Image
    """The cropped isotropic reference grid (LPS-aligned), voxel values unused."""
    to_reference: sitk.Transform
    """Maps grid points to the T1c source's physical space (identity without an atlas)."""
    record: dict[str, object] = field(default_factory=dict)

    def stacked(self, order: Sequence[Role] = CHANNEL_ORDER) -> np.ndarray:
        """(channels, x, y, z) float32 in the given channel order."""
        return np.stack([self.channels[role] for role in order]).astype(np.float32)


def _xyz(image: sitk.Image) -> np.ndarray:
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))


def _from_xyz(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(grid)
    return image


def _crop_box(mask_xyz: np.ndarray, margin_voxels: int) -> tuple[slice, slice, slice]:
    inside = np.argwhere(mask_xyz > 0)
    if inside.size == 0:
        raise PipelineError("cropping: the brain mask is empty")
    low = np.maximum(inside.min(axis=0) - margin_voxels, 0)
    high = np.minimum(inside.max(axis=0) + margin_voxels + 1, mask_xyz.shape)
    return (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))


def _cropped_grid(grid: sitk.Image, box: tuple[slice, slice, slice]) -> sitk.Image:
    start = [int(part.start) for part in box]
    size = [int(part.stop - part.start) for part in box]
    return sitk.RegionOfInterest(grid, size, start)


def preprocess(
    volumes: Mapping[Role, ConvertedVolume],
    settings: PreprocessingSettings,
    brain: BrainMask | None = None,
) -> PreprocessedStudy:
    """Run the imaging half; raises PipelineError subclasses naming the failed step.

    ``brain``: the mask of the ``brain_extraction_role`` volume when it was already computed
    (the convert step runs the extraction while it converts the other series); None to
    extract it here. A mask not on that volume's grid is not used.

    The three registrations run one after another: at once in three threads (SimpleITK
    releases the GIL) they were no faster on 2 cores (4.8-6.2 s against 4.5-5.4 s, TCGA-FG-6692,
    2026-12-03), each already using both cores.
    """
    missing = [role.value for role in Role if role not in volumes]
    if missing:
        raise PipelineError(f"preprocessing needs T1, T1c, T2 and FLAIR; missing {missing}")
    timings: dict[str, float] = {}
    record: dict[str, object] = {"timings_s": timings}
    images = {role: sitk.Cast(volumes[role].image, sitk.sitkFloat32) for role in Role}
    reference = images[Role.T1C]

    started = time.perf_counter()
    extraction_role = Role(settings.brain_extraction_role)
    if brain is not None and same_grid(brain.mask, images[extraction_role]):
        record["brain_extraction"] = {
            "on": extraction_role.value, **brain.as_record(), "ran_during": "convert",
        }
    else:
        brain = extract_brain(images[extraction_role])
        record["brain_extraction"] = {"on": extraction_role.value, **brain.as_record()}
    timings["brain_extraction"] = time.perf_counter() - started
    mask_on_reference = brain.mask
    if extraction_role is not Role.T1C:
        mask_on_reference = resample_onto(brain.mask, reference, None, sitk.sitkNearestNeighbor)

    started = time.perf_counter()
    transforms: dict[Role, sitk.Transform] = {Role.T1C: sitk.Euler3DTransform()}
    registrations: dict[str, object] = {}
    for role in (Role.T1, Role.T2, Role.FLAIR):
        result = register_rigid(reference, images[role], fixed_mask=mask_on_reference)
        transforms[role] = result.transform
        registrations[role.value] = result.as_record()
    timings["registration"] = time.perf_counter() - started
    record["registration"] = registrations

    to_reference: sitk.Transform = sitk.Euler3DTransform()
    grid_source = reference
    if settings.atlas_path:
        started = time.perf_counter()
        atlas = sitk.ReadImage(str(Path(settings.atlas_path)), sitk.sitkFloat32)
        atlas_result = register_rigid(
            atlas,
            apply_mask(reference, mask_on_reference),
            fixed_mask=sitk.Cast(atlas > 0, sitk.sitkUInt8),
        )
        to_reference = atlas_result.transform
        grid_source = atlas
        record["atlas_registration"] = {"atlas": settings.atlas_path, **atlas_result.as_record()}
        timings["atlas_registration"] = time.perf_counter() - started

    started = time.perf_counter()
    grid = isotropic_grid(grid_source, settings.spacing_mm)
    mask_xyz = _xyz(resample_onto(mask_on_reference, grid, to_reference, sitk.sitkNearestNeighbor))
    box = _crop_box(mask_xyz, int(round(settings.crop_margin_mm / settings.spacing_mm)))
    cropped = _cropped_grid(grid, box)
    mask_xyz = mask_xyz[box].astype(np.uint8)
    channels: dict[Role, np.ndarray] = {}
    statistics: dict[str, object] = {}
    for role in CHANNEL_ORDER:
        composite = sitk.CompositeTransform(3)
        composite.AddTransform(transforms[role])
        composite.AddTransform(to_reference)  # applied first: grid -> T1c space -> this series
        voxels = _xyz(resample_onto(images[role], cropped, composite, sitk.sitkLinear))
        channels[role], mean, std = zscore_over_mask(voxels, mask_xyz)
        statistics[role.value] = {"brain_mean": mean, "brain_std": std}
    timings["resample_and_normalise"] = time.perf_counter() - started
    record["grid"] = {
        "spacing_mm": settings.spacing_mm,
        "size": list(cropped.GetSize()),
        "origin_mm": [round(v, 3) for v in cropped.GetOrigin()],
        "crop_margin_mm": settings.crop_margin_mm,
    }
    record["normalisation"] = statistics
    record["brain_volume_ml"] = brain.volume_ml
    return PreprocessedStudy(channels, mask_xyz, cropped, to_reference, record)


def labels_to_source(
    labels_xyz: np.ndarray, study: PreprocessedStudy, source: ConvertedVolume
) -> sitk.Image:
    """A label map on the network grid, in the exact geometry of the source (T1c) series."""
    if labels_xyz.shape != tuple(study.grid.GetSize()):
        raise PipelineError(
            f"label map shape {labels_xyz.shape} differs from the preprocessing grid {study.grid.GetSize()}"
        )
    labels = _from_xyz(labels_xyz.astype(np.uint8), study.grid)
    inverse = study.to_reference.GetInverse()
    return resample_onto(labels, source.image, inverse, sitk.sitkNearestNeighbor)
