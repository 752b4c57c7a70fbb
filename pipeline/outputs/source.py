"""The T1c source series as the result objects need it: datasets per slice, checked geometry.

Why a separate step: every result object refers to the source images slice by
slice (SEG frames, SR outlines, SC derivation), so the label map must be the
source grid itself, not merely something of the same size. The check here is
cheap (headers only) and catches a label map from another series, a resampled
series (no longer one slice per source image) or a transposed array before a
wrong SEG reaches a PACS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut

from segnode.pipeline.conversion import SliceRef
from segnode.pipeline.outputs.errors import OutputError
from segnode.pipeline.sequence_facts import ENHANCED_MR_STORAGE

#: How far (mm) a slice of the label map may lie from its source image's position.
POSITION_TOLERANCE_MM = 0.05
#: Largest difference of direction cosines or pixel spacing accepted as "the same grid".
GRID_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SourceSeries:
    """The source series' instances and which one (and frame) each label slice lies on."""

    instances: tuple[Dataset, ...]
    """Distinct instances in the order highdicom expects them: one per slice in
    slice order (classic), or the single multi-frame instance (Enhanced MR)."""
    slices: tuple[SliceRef, ...]

    def __post_init__(self) -> None:
        if not self.instances or not self.slices:
            raise OutputError("a source series needs instances and slices")
        uids = {str(ds.SOPInstanceUID) for ds in self.instances}
        missing = {s.sop_instance_uid for s in self.slices} - uids
        if missing:
            raise OutputError(
                f"series {self.series_instance_uid}: {len(missing)} slice(s) refer to instances "
                "not among the source files; pass the same files that were converted"
            )

    @property
    def first(self) -> Dataset:
        return self.instances[0]

    @property
    def series_instance_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.first.StudyInstanceUID)

    @property
    def is_multiframe(self) -> bool:
        """True for an Enhanced MR source (frames of one instance)."""
        return str(self.first.SOPClassUID) == ENHANCED_MR_STORAGE

    @property
    def rows(self) -> int:
        return int(self.first.Rows)

    @property
    def columns(self) -> int:
        return int(self.first.Columns)

    @cached_property
    def _by_uid(self) -> dict[str, Dataset]:
        return {str(ds.SOPInstanceUID): ds for ds in self.instances}

    @cached_property
    def _decoded(self) -> dict[str, NDArray[np.float64]]:
        """Decoded frames of a multi-frame instance, filled on first use."""
        return {}

    def instance_of(self, index: int) -> Dataset:
        """The instance slice ``index`` of the label map lies on."""
        return self._by_uid[self.slices[index].sop_instance_uid]

    def slice_pixels(self, index: int) -> NDArray[np.float64]:
        """Pixel values of slice ``index``, (rows, columns), for display only.

        Classic images get their rescale applied; Enhanced MR frames are stored
        values (a linear rescale does not change a percentile window).
        """
        dataset = self.instance_of(index)
        if not self.is_multiframe:
            return np.asarray(apply_modality_lut(dataset.pixel_array, dataset), dtype=np.float64)
        uid = str(dataset.SOPInstanceUID)
        if uid not in self._decoded:  # decode a multi-frame file once, not once per frame
            self._decoded[uid] = np.asarray(dataset.pixel_array, dtype=np.float64)
        frames = self._decoded[uid]
        return frames[self.slices[index].frame - 1] if frames.ndim == 3 else frames


def _instances_in_slice_order(
    datasets: Sequence[Dataset], slices: Sequence[SliceRef]
) -> tuple[Dataset, ...]:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    ordered: list[Dataset] = []
    seen: set[str] = set()
    for ref in slices:
        if ref.sop_instance_uid in by_uid and ref.sop_instance_uid not in seen:
            seen.add(ref.sop_instance_uid)
            ordered.append(by_uid[ref.sop_instance_uid])
    return tuple(ordered)


def plane_geometry(
    dataset: Dataset, frame: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Orientation (6), pixel spacing (2) and position (3) of one frame."""
    if str(dataset.SOPClassUID) == ENHANCED_MR_STORAGE:
        shared = dataset.get("SharedFunctionalGroupsSequence")
        shared_item = shared[0] if shared else Dataset()
        per_frame = dataset.PerFrameFunctionalGroupsSequence[frame - 1]

        def group(name: str) -> Dataset:
            sequence = per_frame.get(name) or shared_item.get(name)
            if not sequence:
                raise OutputError(f"instance {dataset.SOPInstanceUID}: frame {frame} has no {name}")
            item: Dataset = sequence[0]
            return item

        orientation = group("PlaneOrientationSequence").ImageOrientationPatient
        spacing = group("PixelMeasuresSequence").PixelSpacing
        position = group("PlanePositionSequence").ImagePositionPatient
    else:
        orientation, spacing = dataset.ImageOrientationPatient, dataset.PixelSpacing
        position = dataset.ImagePositionPatient
    return (
        np.asarray([float(v) for v in orientation]),
        np.asarray([float(v) for v in spacing]),
        np.asarray([float(v) for v in position]),
    )


def check_label_geometry(labels: sitk.Image, source: SourceSeries) -> None:
    """Refuse a label map that is not exactly the source series' grid.

    Raises:
        OutputError: naming the series and the first mismatch.
    """
    where = f"series {source.series_instance_uid}"
    size = labels.GetSize()
    if size != (source.columns, source.rows, len(source.slices)):
        raise OutputError(
            f"{where}: label map size {size} is not (columns, rows, slices) = "
            f"({source.columns}, {source.rows}, {len(source.slices)}); a resampled or "
            "cropped label map must first be mapped back onto the source grid"
        )
    direction = np.asarray(labels.GetDirection()).reshape(3, 3)
    origin = np.asarray(labels.GetOrigin())
    spacing = np.asarray(labels.GetSpacing())
    for index, ref in enumerate(source.slices):
        orientation, pixel_spacing, position = plane_geometry(source.instance_of(index), ref.frame)
        if (
            np.abs(orientation[:3] - direction[:, 0]).max() > GRID_TOLERANCE
            or np.abs(orientation[3:] - direction[:, 1]).max() > GRID_TOLERANCE
            or np.abs(pixel_spacing[::-1] - spacing[:2]).max() > GRID_TOLERANCE
        ):
            raise OutputError(
                f"{where}: slice {index} has another orientation or pixel spacing than the label map"
            )
        expected = origin + index * spacing[2] * direction[:, 2]
        if np.abs(position - expected).max() > POSITION_TOLERANCE_MM:
            raise OutputError(
                f"{where}: slice {index} of the label map lies "
                f"{float(np.linalg.norm(position - expected)):.2f} mm from its source image; "
                "the label map is not in the source series' geometry"
            )


def load_source_series(files: Sequence[Path], slices: Sequence[SliceRef]) -> SourceSeries:
    """Read the source files (with pixels: the secondary capture and PDF show them).

    Raises:
        OutputError: for files of several series, or slices that name instances
            not among the files.
    """
    if not files:
        raise OutputError("no source files given")
    datasets = [dcmread(path) for path in files]
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) != 1:
        raise OutputError(f"source files come from {len(series)} series, expected one")
    return SourceSeries(_instances_in_slice_order(datasets, slices), tuple(slices))
