"""What the viewer test expects, computed from the result files, and how it judges the page.

Pure functions (no browser), so their power to fail is tested on its own
(tests/viewer/test_checks.py): an overlay a few centimetres off must fail the overlay check,
a panel with a wrong or missing volume must fail the measurement check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset

from segnode.pipeline.outputs.codes import REGION_CODES
from segnode.vocabulary import ALL_REGIONS, Region

#: A canvas pixel is "coloured" (segment overlay) when max - min over R, G, B exceeds this:
#: an MR image renders grey (0), OHIF's segment colours are saturated (well above 100).
CHROMA_THRESHOLD = 40
#: Least Dice between the coloured canvas pixels and the SEG's mask mapped onto the canvas.
MIN_OVERLAY_DICE = 0.8
#: Most distance between their centroids, in mm of the source image.
MAX_CENTROID_MM = 2.0
#: How far the test moves the expected mask to show the check would catch a misplaced overlay.
OFFSET_PROBE_MM = 30.0


# --- the SEG on its source slice ----------------------------------------------------------------


@dataclass(frozen=True)
class SliceGeometry:
    """Where a source image's pixel centres lie in patient space (LPS, mm)."""

    position: NDArray[np.float64]  # ImagePositionPatient: the centre of pixel (row 0, column 0)
    row_direction: NDArray[np.float64]  # along increasing column index
    column_direction: NDArray[np.float64]  # along increasing row index
    row_spacing_mm: float  # between rows (PixelSpacing[0])
    column_spacing_mm: float  # between columns (PixelSpacing[1])

    @classmethod
    def of(cls, image: Dataset) -> SliceGeometry:
        cosines = np.array([float(v) for v in image.ImageOrientationPatient])
        spacing = [float(v) for v in image.PixelSpacing]
        return cls(np.array([float(v) for v in image.ImagePositionPatient]), cosines[:3], cosines[3:],
                   spacing[0], spacing[1])

    def world(self, row: float, column: float) -> NDArray[np.float64]:
        return (self.position + column * self.column_spacing_mm * self.row_direction
                + row * self.row_spacing_mm * self.column_direction)

    def reference_points(self) -> list[list[float]]:
        """Pixel centres (0, 0), (0, 1) and (1, 0): their canvas positions fix the mapping."""
        return [self.world(0, 0).tolist(), self.world(0, 1).tolist(), self.world(1, 0).tolist()]


@dataclass(frozen=True)
class TumourSlice:
    """The source image with the largest tumour area and the SEG's mask on it."""

    sop_instance_uid: str
    series_instance_uid: str
    geometry: SliceGeometry
    mask: NDArray[np.bool_]  # (rows, columns): any segment
    area_mm2: float


def referenced_series(seg_path: Path) -> str | None:
    """The Series Instance UID of the (first) series a SEG lies on."""
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    referenced = seg.get("ReferencedSeriesSequence")
    return str(referenced[0].SeriesInstanceUID) if referenced else None


def largest_tumour_slice(seg_path: Path, source_files: Sequence[Path]) -> TumourSlice:
    """Read the SEG itself: the source slice where its segments cover the most pixels."""
    seg = hd.seg.segread(seg_path)
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in source_files]
    uids = [str(image.SOPInstanceUID) for image in sources]
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True)
    areas = (labels > 0).reshape(len(uids), -1).sum(axis=1)
    best = int(np.argmax(areas))
    if areas[best] == 0:
        raise AssertionError(f"{seg_path.name}: the SEG has no segment pixel on any source image")
    geometry = SliceGeometry.of(sources[best])
    return TumourSlice(uids[best], str(sources[best].SeriesInstanceUID), geometry, labels[best] > 0,
                       float(areas[best]) * geometry.row_spacing_mm * geometry.column_spacing_mm)


@dataclass(frozen=True)
class CanvasMapping:
    """Affine map from (row, column) of the source image to canvas pixels (x, y)."""

    origin: NDArray[np.float64]  # canvas position of pixel centre (0, 0)
    per_column: NDArray[np.float64]  # canvas step for column + 1
    per_row: NDArray[np.float64]  # canvas step for row + 1

    @classmethod
    def from_points(cls, points: Sequence[Sequence[float]]) -> CanvasMapping:
        """From cornerstone's ``worldToCanvas`` of ``SliceGeometry.reference_points()``."""
        p00, p01, p10 = (np.array(p[:2], dtype=float) for p in points)
        return cls(p00, p01 - p00, p10 - p00)

    def to_image(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        """Canvas (x, y) → fractional (row, column)."""
        matrix = np.column_stack([self.per_row, self.per_column])  # [x, y] = origin + M @ [row, column]
        inverse = np.linalg.inv(matrix)
        offsets = np.stack([x - self.origin[0], y - self.origin[1]])
        row, column = np.tensordot(inverse, offsets, axes=1)
        return row, column


def expected_on_canvas(mask: NDArray[np.bool_], mapping: CanvasMapping, shape: tuple[int, int],
                       shift_columns: float = 0.0) -> NDArray[np.bool_]:
    """The mask drawn where the canvas shows each source pixel (nearest pixel centre).

    ``shift_columns`` moves the mask along the image rows, to probe the check with a wrong overlay.
    """
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    row, column = mapping.to_image(xs + 0.5, ys + 0.5)
    row_index = np.rint(row).astype(int)
    column_index = np.rint(column - shift_columns).astype(int)
    inside = ((row_index >= 0) & (row_index < mask.shape[0])
              & (column_index >= 0) & (column_index < mask.shape[1]))
    expected = np.zeros(shape, dtype=bool)
    expected[inside] = mask[row_index[inside], column_index[inside]]
    return expected


def coloured_pixels(png: Path) -> NDArray[np.bool_]:
    """The canvas pixels that carry colour (the segment overlay over a grey MR image)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return (rgb.max(axis=2) - rgb.min(axis=2)) > CHROMA_THRESHOLD


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


@dataclass(frozen=True)
class OverlayVerdict:
    dice: float
    centroid_mm: float
    overlay_pixels: int
    expected_pixels: int
    offset_probe_dice: float  # the same check against the mask moved OFFSET_PROBE_MM

    def problems(self) -> list[str]:
        found = []
        if self.dice < MIN_OVERLAY_DICE:
            found.append(f"overlay Dice {self.dice:.3f} < {MIN_OVERLAY_DICE} against the SEG's own mask")
        if not self.centroid_mm <= MAX_CENTROID_MM:
            found.append(f"overlay centroid {self.centroid_mm:.1f} mm from the SEG's (> {MAX_CENTROID_MM} mm)")
        if self.offset_probe_dice >= MIN_OVERLAY_DICE:
            found.append(f"the check cannot tell a {OFFSET_PROBE_MM:.0f} mm offset overlay "
                         f"(Dice {self.offset_probe_dice:.3f}): it proves nothing")
        return found


def judge_overlay(observed: NDArray[np.bool_], tumour: TumourSlice, mapping: CanvasMapping) -> OverlayVerdict:
    """Compare the coloured canvas pixels with the SEG's mask placed by cornerstone's mapping."""
    shape = (observed.shape[0], observed.shape[1])
    expected = expected_on_canvas(tumour.mask, mapping, shape)
    probe = expected_on_canvas(tumour.mask, mapping, shape,
                               shift_columns=OFFSET_PROBE_MM / tumour.geometry.column_spacing_mm)
    centroid_mm = float("inf")
    if observed.any():
        ys, xs = np.nonzero(observed)
        row, column = mapping.to_image(xs.astype(np.float64) + 0.5, ys.astype(np.float64) + 0.5)
        want_rows, want_columns = np.nonzero(tumour.mask)
        centroid_mm = float(np.hypot((row.mean() - want_rows.mean()) * tumour.geometry.row_spacing_mm,
                                     (column.mean() - want_columns.mean()) * tumour.geometry.column_spacing_mm))
    return OverlayVerdict(dice(observed, expected), centroid_mm, int(observed.sum()), int(expected.sum()),
                          dice(observed, probe))


# --- the SR's volumes and OHIF's measurement panel ----------------------------------------------

TRACKING_IDENTIFIER = ("112039", "DCM")
FINDING = ("121071", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
MILLILITRE_UNITS = frozenset({"ml", "mL"})
_REGION_WORD = re.compile(r"\b(" + "|".join(region.value for region in ALL_REGIONS) + r")\b")
_VOLUME_TEXT = re.compile(r"(-?\d+(?:[.,]\d+)?)\s*(?:ml|mL|ML)\b")


def _concept(item: Dataset, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str] | None:
    sequence = item.get(attribute)
    if not sequence:
        return None
    return str(sequence[0].CodeValue), str(sequence[0].CodingSchemeDesignator)


def _walk(items: Iterable[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _region_of(group: Dataset) -> Region | None:
    """The group's region: its coded finding type first, then a region word in its texts."""
    by_code = {(code.value, code.scheme_designator): region for region, code in REGION_CODES.items()}
    texts = []
    for item in _walk(group.get("ContentSequence", [])):
        value = _concept(item, "ConceptCodeSequence")
        if _concept(item) == FINDING and value in by_code:
            return by_code[value]
        if item.get("TextValue"):
            texts.append(str(item.TextValue))
    for text in texts:
        if match := _REGION_WORD.search(text):
            return Region(match.group(1))
    return None


def sr_volumes(sr_path: Path) -> dict[Region, float]:
    """Each region's volume in ml, as the SR file states it (one value per region)."""
    sr = pydicom.dcmread(sr_path)
    found: dict[Region, set[float]] = {}
    for group in _walk(sr.ContentSequence):
        if group.ValueType != "CONTAINER" or _concept(group) != MEASUREMENT_GROUP:
            continue
        region = _region_of(group)
        for item in group.get("ContentSequence", []):
            if item.ValueType != "NUM" or not item.get("MeasuredValueSequence"):
                continue
            value = item.MeasuredValueSequence[0]
            if str(value.MeasurementUnitsCodeSequence[0].CodeValue) in MILLILITRE_UNITS and region is not None:
                found.setdefault(region, set()).add(float(value.NumericValue))
    ambiguous = {region: values for region, values in found.items() if len(values) != 1}
    if ambiguous:
        raise AssertionError(f"{sr_path.name}: more than one volume for {ambiguous}")
    return {region: values.pop() for region, values in found.items()}


@dataclass(frozen=True)
class PanelRow:
    title: str
    details: tuple[str, ...]
    text: str

    @classmethod
    def of(cls, row: dict[str, Any]) -> PanelRow:
        return cls(str(row.get("title", "")), tuple(str(d) for d in row.get("details", [])), str(row.get("text", "")))


def panel_problems(rows: Sequence[PanelRow], volumes: dict[Region, float]) -> list[str]:
    """Does OHIF's measurement panel list one row per region with the SR's volume (2 decimals)?

    A row belongs to a region when its text names the region's abbreviation as a word
    (e.g. "WT whole tumor"); its volume is a number followed by "ml" (or "mL") in the row.
    """
    found = []
    missing = [region.value for region in ALL_REGIONS if region not in volumes]
    if missing:
        found.append(f"the SR file has no volume for {', '.join(missing)}")
    for region in ALL_REGIONS:
        mine = [row for row in rows if region.value in _REGION_WORD.findall(row.text)]
        if len(mine) != 1:
            found.append(f"{region.value}: {len(mine)} rows in the measurement panel name it, expected 1")
            continue
        shown = [float(value.replace(",", ".")) for value in _VOLUME_TEXT.findall(mine[0].text)]
        if region in volumes:
            want = round(volumes[region], 2)
            if not any(round(value, 2) == want for value in shown):
                found.append(f"{region.value}: the panel row {mine[0].text!r} does not show {want:.2f} ml")
    extra = [row.text for row in rows if not _REGION_WORD.search(row.text)]
    if extra:
        found.append(f"the panel lists rows that name no region: {extra}")
    return found


# --- the console ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenignNoise:
    """A console error that is understood and harmless here, with the reason."""

    pattern: re.Pattern[str]
    reason: str


#: Every filter is listed with why it is harmless; everything else fails the test.
BENIGN_CONSOLE_ERRORS: tuple[BenignNoise, ...] = ()


def console_problems(entries: Sequence[dict[str, Any]], page_errors: Sequence[dict[str, Any]],
                     noise: Sequence[BenignNoise] = BENIGN_CONSOLE_ERRORS) -> list[str]:
    """Console errors and uncaught page errors that no ``BenignNoise`` explains."""
    found = []
    for entry in entries:
        if entry.get("type") != "error":
            continue
        text = str(entry.get("text", ""))
        if not any(filter_.pattern.search(text) for filter_ in noise):
            found.append(f"console error at {entry.get('at', '?')} s: {text[:300]}")
    found.extend(f"uncaught page error at {error.get('at', '?')} s: {str(error.get('text'))[:300]}"
                 for error in page_errors)
    return found
