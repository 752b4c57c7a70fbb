"""A DICOM series becomes a volume with a correct patient-space geometry.

Why this shape: the pixel reading is SimpleITK's (GDCM underneath: every
compressed transfer syntax the node accepts, rescale slope/intercept,
multi-frame Enhanced MR). What SimpleITK does not do is refuse a bad series:
it silently stacks slices with gaps, mixed orientations or duplicate
positions. So the geometry is checked first from the headers (pydicom), the
slices are ordered along the slice normal, duplicates are resolved
deterministically and reported, and spacing that is not uniform is rejected
or resampled by policy. Positions are patient coordinates (LPS), so HFS, HFP
and decubitus acquisitions need no special case; oblique stacks keep their
direction cosines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset

from segnode.pipeline.errors import ConversionError
from segnode.pipeline.sequence_facts import ENHANCED_MR_STORAGE

log = logging.getLogger(__name__)

SPACING_TOLERANCE_MM = 0.05
ORIENTATION_TOLERANCE = 1e-3


class SpacingPolicy(StrEnum):
    REJECT = "reject"
    RESAMPLE = "resample"


@dataclass(frozen=True, slots=True)
class SliceRef:
    """Which source instance (and frame) a slice of the volume came from."""

    sop_instance_uid: str
    frame: int
    """1-based frame number (1 for single-frame instances)."""
    position_mm: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class ConvertedVolume:
    image: sitk.Image
    """Voxels in LPS patient space, slices ordered along the slice normal."""
    series_instance_uid: str
    slices: tuple[SliceRef, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_record(self) -> dict[str, object]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "size": list(self.image.GetSize()),
            "spacing_mm": [round(v, 6) for v in self.image.GetSpacing()],
            "origin_mm": [round(v, 4) for v in self.image.GetOrigin()],
            "direction": [round(v, 6) for v in self.image.GetDirection()],
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class _Slice:
    path: Path
    frame: int
    sop_instance_uid: str
    instance_number: int
    position: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int]


def _vector(value: object, length: int, what: str, where: str) -> np.ndarray:
    try:
        array = np.asarray([float(v) for v in value], dtype=float)  # type: ignore[attr-defined,type-var]
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{where}: {what} missing or not numeric") from exc
    if array.shape != (length,):
        raise ConversionError(f"{where}: {what} has {array.size} values, expected {length}")
    return array


def _classic_slices(path: Path, header: Dataset) -> list[_Slice]:
    where = f"instance {header.get('SOPInstanceUID', path.name)}"
    orientation = _vector(
        header.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where
    )
    spacing = _vector(header.get("PixelSpacing"), 2, "PixelSpacing", where)
    return [
        _Slice(
            path=path,
            frame=1,
            sop_instance_uid=str(header.SOPInstanceUID),
            instance_number=int(header.get("InstanceNumber") or 0),
            position=_vector(header.get("ImagePositionPatient"), 3, "ImagePositionPatient", where),
            row_cosine=orientation[:3],
            column_cosine=orientation[3:],
            pixel_spacing=(spacing[0], spacing[1]),
            shape=(int(header.Rows), int(header.Columns)),
        )
    ]


def _enhanced_slices(path: Path, header: Dataset) -> list[_Slice]:
    where = f"instance {header.SOPInstanceUID}"
    shared = header.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    slices = []
    for index, frame in enumerate(header.PerFrameFunctionalGroupsSequence, start=1):

        def item(name: str, frame: Dataset = frame, index: int = index) -> Dataset:
            """A functional group macro: per-frame if present, else shared."""
            sequence = frame.get(name) or shared_item.get(name)
            if not sequence:
                raise ConversionError(f"{where}: frame {index} has no {name}")
            group: Dataset = sequence[0]
            return group

        orientation = _vector(
            item("PlaneOrientationSequence").ImageOrientationPatient,
            6,
            "ImageOrientationPatient",
            where,
        )
        spacing = _vector(item("PixelMeasuresSequence").PixelSpacing, 2, "PixelSpacing", where)
        slices.append(
            _Slice(
                path=path,
                frame=index,
                sop_instance_uid=str(header.SOPInstanceUID),
                instance_number=index,
                position=_vector(
                    item("PlanePositionSequence").ImagePositionPatient,
                    3,
                    "ImagePositionPatient",
                    where,
                ),
                row_cosine=orientation[:3],
                column_cosine=orientation[3:],
                pixel_spacing=(spacing[0], spacing[1]),
                shape=(int(header.Rows), int(header.Columns)),
            )
        )
    return slices


def _check_common_geometry(slices: list[_Slice], series_uid: str) -> np.ndarray:
    first = slices[0]
    for other in slices[1:]:
        if other.shape != first.shape:
            raise ConversionError(
                f"series {series_uid}: slices of different sizes {first.shape} and {other.shape}"
            )
        if (
            np.abs(other.row_cosine - first.row_cosine).max() > ORIENTATION_TOLERANCE
            or np.abs(other.column_cosine - first.column_cosine).max() > ORIENTATION_TOLERANCE
        ):
            raise ConversionError(
                f"series {series_uid}: slices with different orientations (a localizer or a "
                "multi-stack series); it cannot be one volume"
            )
        if np.abs(np.subtract(other.pixel_spacing, first.pixel_spacing)).max() > 1e-4:
            raise ConversionError(f"series {series_uid}: slices with different pixel spacing")
    normal = np.cross(first.row_cosine, first.column_cosine)
    if abs(np.linalg.norm(normal) - 1.0) > ORIENTATION_TOLERANCE:
        raise ConversionError(f"series {series_uid}: ImageOrientationPatient is not orthonormal")
    return normal


def _order_and_deduplicate(
    slices: list[_Slice], normal: np.ndarray, series_uid: str
) -> tuple[list[_Slice], list[str]]:
    """Sort along the normal; resolve isolated duplicate positions deterministically.

    Several images at most positions mean a multi-volume series (dynamic,
    multi-echo, diffusion): that is refused, not flattened. An isolated
    duplicate (a re-sent or repeated slice) keeps the image with the highest
    InstanceNumber, then the highest SOP Instance UID, and says so.
    """
    ordered = sorted(
        slices, key=lambda s: (float(s.position @ normal), s.instance_number, s.sop_instance_uid)
    )
    groups: list[list[_Slice]] = []
    for current in ordered:
        if (
            groups
            and abs(float((current.position - groups[-1][-1].position) @ normal))
            < SPACING_TOLERANCE_MM
        ):
            groups[-1].append(current)
        else:
            groups.append([current])
    repeated = [group for group in groups if len(group) > 1]
    if repeated and len(repeated) * 2 > len(groups):
        counts = sorted({len(group) for group in groups})
        raise ConversionError(
            f"series {series_uid}: {len(ordered)} images at {len(groups)} positions "
            f"({'/'.join(map(str, counts))} per position): a multi-volume series "
            "(dynamic, multi-echo or diffusion), not one 3D volume"
        )
    notes = [
        f"{len(group)} images at slice position {float(group[-1].position @ normal):.2f} mm: kept "
        f"{group[-1].sop_instance_uid} (frame {group[-1].frame}, highest InstanceNumber), dropped "
        + ", ".join(f"{s.sop_instance_uid} (frame {s.frame})" for s in group[:-1])
        for group in repeated
    ]
    if notes:
        log.warning("duplicate slice positions resolved", extra={"positions": len(notes)})
    return [group[-1] for group in groups], notes


def _slice_gaps(slices: list[_Slice], normal: np.ndarray) -> np.ndarray:
    positions = np.asarray([float(s.position @ normal) for s in slices])
    return np.diff(positions)


def _read_pixels(slices: list[_Slice]) -> np.ndarray:
    """Voxels as float32, shape (slices, rows, columns), rescale applied, via SimpleITK/GDCM."""
    planes = []
    cache: dict[Path, np.ndarray] = {}
    for piece in slices:
        if piece.path not in cache:
            cache[piece.path] = sitk.GetArrayFromImage(
                sitk.ReadImage(str(piece.path), sitk.sitkFloat32)
            )
        array = cache[piece.path]
        planes.append(array[piece.frame - 1] if array.ndim == 3 else array)
    return np.stack(planes).astype(np.float32)


def _image(
    voxels: np.ndarray, first: _Slice, normal: np.ndarray, slice_spacing: float
) -> sitk.Image:
    image = sitk.GetImageFromArray(voxels)
    image.SetOrigin(tuple(float(v) for v in first.position))
    # PixelSpacing is [row spacing (between rows), column spacing (between columns)].
    image.SetSpacing(
        (float(first.pixel_spacing[1]), float(first.pixel_spacing[0]), float(slice_spacing))
    )
    direction = np.column_stack([first.row_cosine, first.column_cosine, normal])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def _resample_uniform(voxels: np.ndarray, gaps: np.ndarray, spacing: float) -> np.ndarray:
    positions = np.concatenate([[0.0], np.cumsum(gaps)])
    targets = np.arange(0.0, positions[-1] + 1e-6, spacing)
    upper = np.clip(np.searchsorted(positions, targets, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = ((targets - positions[lower]) / (positions[upper] - positions[lower]))[:, None, None]
    return ((1 - weight) * voxels[lower] + weight * voxels[upper]).astype(np.float32)


def convert_series(
    files: Sequence[Path], policy: SpacingPolicy = SpacingPolicy.REJECT
) -> ConvertedVolume:
    """Read one series' files into a volume; raise ConversionError with a clear reason."""
    if not files:
        raise ConversionError("a series without files cannot be converted")
    headers = [(Path(path), dcmread(path, stop_before_pixels=True)) for path in files]
    series_uids = {str(header.SeriesInstanceUID) for _, header in headers}
    if len(series_uids) != 1:
        raise ConversionError(f"files from {len(series_uids)} series given as one")
    series_uid = series_uids.pop()
    slices: list[_Slice] = []
    for path, header in headers:
        if (
            "PixelData" not in header
            and "FloatPixelData" not in header
            and header.get("Rows") is None
        ):
            raise ConversionError(
                f"series {series_uid}: instance {header.SOPInstanceUID} has no image"
            )
        if str(header.get("SOPClassUID")) == ENHANCED_MR_STORAGE:
            slices.extend(_enhanced_slices(path, header))
        else:
            slices.extend(_classic_slices(path, header))
    if len(slices) < 2:
        raise ConversionError(f"series {series_uid}: a single slice is not a volume")

    normal = _check_common_geometry(slices, series_uid)
    slices, notes = _order_and_deduplicate(slices, normal, series_uid)
    gaps = _slice_gaps(slices, normal)
    if gaps.size == 0:
        raise ConversionError(f"series {series_uid}: all slices at one position")
    spacing = float(np.median(gaps))
    voxels = _read_pixels(slices)
    if np.abs(gaps - spacing).max() > SPACING_TOLERANCE_MM:
        described = f"slice spacing varies from {gaps.min():.3f} to {gaps.max():.3f} mm"
        if policy is SpacingPolicy.REJECT:
            raise ConversionError(
                f"series {series_uid}: {described} (gaps or a multi-stack series); "
                "set the spacing policy to 'resample' to interpolate it onto a uniform grid"
            )
        spacing = float(gaps.min())
        voxels = _resample_uniform(voxels, gaps, spacing)
        notes.append(f"{described}: resampled to uniform {spacing:.3f} mm (linear)")
        slices = slices[:1]
    image = _image(voxels, slices[0], normal, spacing)
    refs = tuple(
        SliceRef(
            s.sop_instance_uid,
            s.frame,
            (float(s.position[0]), float(s.position[1]), float(s.position[2])),
        )
        for s in slices
    )
    return ConvertedVolume(
        image=image, series_instance_uid=series_uid, slices=refs, notes=tuple(notes)
    )
