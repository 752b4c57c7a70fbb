"""Tumour regions from a label map: masks, voxel counts and volumes.

Why one module: the SEG, the SR, the secondary capture and the PDF all derive
their regions from the same label map, and the SR volumes must equal the SEG
masks to the voxel. Volumes are voxel count x voxel volume of the label image
(no partial voxels, no resampling), so anyone can recompute them from the SEG.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from segnode.pipeline.outputs.errors import OutputError, OutputSpecError
from segnode.vocabulary import ALL_REGIONS, REGION_PARTS, LabelConvention, Region

MM3_PER_ML = 1000.0

#: Display colour (sRGB) of each labelled region, shared by SEG, SC and PDF.
REGION_COLOURS_RGB: MappingProxyType[Region, tuple[int, int, int]] = MappingProxyType(
    {
        Region.NCR: (230, 40, 40),
        Region.ED: (40, 200, 60),
        Region.ET: (255, 215, 0),
    }
)

#: How each region is named to a reader: its abbreviation, then its name (SR tracking
#: identifiers, PDF, SC legend, OHIF's measurement panel).
REGION_NAMES: MappingProxyType[Region, str] = MappingProxyType(
    {
        Region.WT: "WT whole tumor",
        Region.TC: "TC tumor core",
        Region.ET: "ET enhancing tumor",
        Region.NCR: "NCR necrosis",
        Region.ED: "ED edema",
    }
)


def convention_of(et_label: int) -> LabelConvention:
    """The label convention whose ET label is ``et_label`` (4: BraTS 2017-2021, 3: 2023+).

    Raises:
        OutputSpecError: for any other value (a wrong convention would swap regions).
    """
    try:
        return LabelConvention.with_et_label(et_label)
    except ValueError as exc:
        raise OutputSpecError(f"label convention: {exc}") from exc


@dataclass(frozen=True, slots=True)
class RegionVolume:
    """One region's size in the label map."""

    region: Region
    voxel_count: int
    volume_ml: float

    def __post_init__(self) -> None:
        if self.voxel_count < 0 or self.volume_ml < 0:
            raise OutputSpecError(f"region {self.region}: negative size")


@dataclass(frozen=True, slots=True)
class RegionStatistics:
    """Voxel counts and volumes of WT, TC, ET, NCR and ED in one label map."""

    voxel_volume_mm3: float
    volumes: tuple[RegionVolume, ...]

    def __post_init__(self) -> None:
        if not self.voxel_volume_mm3 > 0:
            raise OutputSpecError(f"voxel volume {self.voxel_volume_mm3} mm3 is not positive")
        if tuple(v.region for v in self.volumes) != ALL_REGIONS:
            raise OutputSpecError("region statistics must list WT, TC, ET, NCR, ED in that order")

    def __getitem__(self, region: Region) -> RegionVolume:
        return self.volumes[ALL_REGIONS.index(Region(region))]

    @property
    def is_empty(self) -> bool:
        """True when the label map holds no tumour voxel at all."""
        return self[Region.WT].voxel_count == 0

    def as_record(self) -> dict[str, object]:
        """Volumes for the job's record: ``{"WT": {"voxels": n, "ml": v}, ...}``."""
        return {
            "voxel_volume_mm3": self.voxel_volume_mm3,
            **{v.region.value: {"voxels": v.voxel_count, "ml": v.volume_ml} for v in self.volumes},
        }


def label_array(labels: sitk.Image, convention: LabelConvention) -> NDArray[np.uint8]:
    """The label map as a (slice, row, column) array, checked against the convention.

    Raises:
        OutputError: for a non-integer or non-3-D image, or label values the
            convention does not define (a wrong convention would silently swap regions).
    """
    if labels.GetDimension() != 3:
        raise OutputError(f"label map has {labels.GetDimension()} dimensions, expected 3")
    array = sitk.GetArrayFromImage(labels)
    if not np.issubdtype(array.dtype, np.integer):
        raise OutputError(f"label map has pixel type {array.dtype}, expected integer labels")
    found = {int(v) for v in np.unique(array)}
    unknown = sorted(found - {0, *convention.labels.values()})
    if unknown:
        raise OutputError(
            f"label map holds values {unknown} that the BraTS convention with ET = "
            f"{convention.et_label} does not define; check convention_et_label"
        )
    return array.astype(np.uint8, copy=False)


def region_masks(
    array: NDArray[np.integer], convention: LabelConvention
) -> dict[Region, NDArray[np.bool_]]:
    """Boolean masks of all five regions (TC and WT as unions), same shape as ``array``."""
    base = {region: array == value for region, value in convention.labels.items()}
    masks: dict[Region, NDArray[np.bool_]] = {}
    for region in ALL_REGIONS:
        parts = [base[part] for part in REGION_PARTS[region]]
        masks[region] = np.logical_or.reduce(parts) if len(parts) > 1 else parts[0]
    return masks


def voxel_volume_mm3(labels: sitk.Image) -> float:
    """Volume of one voxel of the label image, from its spacing (mm)."""
    return float(np.prod(labels.GetSpacing()))


def region_statistics(
    masks: Mapping[Region, NDArray[np.bool_]], voxel_volume: float
) -> RegionStatistics:
    """Voxel counts and volumes (ml) of every region."""
    volumes = []
    for region in ALL_REGIONS:
        count = int(np.count_nonzero(masks[region]))
        volumes.append(RegionVolume(region, count, count * voxel_volume / MM3_PER_ML))
    return RegionStatistics(voxel_volume, tuple(volumes))


def volumes_ml(labels: sitk.Image, convention_et_label: int) -> RegionStatistics:
    """Region statistics straight from a label image (the job's record, the tests).

    Args:
        labels: integer label map; its spacing (mm) gives the voxel volume.
        convention_et_label: 4 (BraTS 2017-2021) or 3 (BraTS 2023+).
    """
    convention = convention_of(convention_et_label)
    masks = region_masks(label_array(labels, convention), convention)
    return region_statistics(masks, voxel_volume_mm3(labels))
