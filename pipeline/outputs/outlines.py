"""Closed outlines of a binary slice mask, in DICOM SCOORD pixel coordinates.

Why outlines at all: a viewer (OHIF 3.13) lists and shows a measurement only when
it carries a planar SCOORD on a source image, so the SR gives each region one
outline on the slice where the region is largest (``largest_slice``,
``representative_outline``) beside its reference to the SEG segment
(docs/ohif-sr-notes.md).

Coordinates: DICOM 2-D SCOORDs are (column, row) pairs with (0, 0) at the
top-left corner of the top-left pixel, so the centre of pixel (r, c) is
(c + 0.5, r + 0.5) (PS3.3 C.18.6.1.2). ``skimage.measure.find_contours`` traces
the 0.5 iso-line between pixel centres (marching squares), so the outline runs
half-way between a region's edge pixels and their outside neighbours. The mask
is padded by one pixel so contours touching the image border still close.

Holes: a ring (oedema around the core) has an outer and an inner contour; both
are returned as separate closed polygons (the XOR reading RT structures use).
The outlines are for display; volumes always come from the mask. A viewer's
planar ROI is one closed polygon, so the SR's one outline per region is the
outer boundary of its largest piece on that slice (holes and smaller pieces are
not drawn; the SEG has them).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from skimage.measure import approximate_polygon, find_contours

from segnode.pipeline.outputs.errors import OutputError

#: Douglas-Peucker tolerance (pixels) that drops only (nearly) collinear points:
#: marching squares emits one point per pixel edge, most on straight runs.
COLLINEAR_TOLERANCE_PX = 0.01


def mask_outlines(mask: NDArray[np.bool_]) -> list[NDArray[np.float64]]:
    """Closed outlines of every connected piece (and hole) of a 2-D mask.

    Args:
        mask: (rows, columns) boolean mask of one slice.

    Returns:
        One (N, 2) array per outline, (column, row) pixel coordinates, the first
        point repeated as the last (a closed POLYLINE); empty for an empty mask.

    Raises:
        OutputError: if ``mask`` is not 2-D.
    """
    if mask.ndim != 2:
        raise OutputError(f"outlines need a 2-D slice mask, got shape {mask.shape}")
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float64), 1)
    outlines = []
    for contour in find_contours(padded, 0.5, fully_connected="high"):
        simplified = approximate_polygon(contour, tolerance=COLLINEAR_TOLERANCE_PX)
        rows_columns = simplified - 1.0  # undo the padding
        points = np.column_stack([rows_columns[:, 1] + 0.5, rows_columns[:, 0] + 0.5])
        if not np.array_equal(points[0], points[-1]):
            points = np.vstack([points, points[:1]])
        outlines.append(points)
    return outlines


def polygon_area_px(points: NDArray[np.float64]) -> float:
    """Area enclosed by a closed (column, row) polygon, in square pixels (shoelace).

    It is what a viewer computes for the drawn outline (Cornerstone's PlanarFreehandROI
    takes the polygon's area), not the piece's pixel count: marching squares cuts each
    convex corner by 1/8 pixel.
    """
    columns, rows = points[:, 0], points[:, 1]
    return float(abs(np.dot(columns, np.roll(rows, -1)) - np.dot(rows, np.roll(columns, -1))) / 2)


def representative_outline(mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """The outline enclosing the largest area: the outer boundary of the largest piece.

    A hole's contour lies inside its piece's outer contour, so it always encloses less;
    among pieces, the one with the largest filled area wins (the first such on a tie).

    Raises:
        OutputError: for an empty or non-2-D mask (there is nothing to outline).
    """
    outlines = mask_outlines(mask)
    if not outlines:
        raise OutputError("an empty slice mask has no outline")
    return max(outlines, key=polygon_area_px)


def largest_slice(mask: NDArray[np.bool_]) -> int:
    """Index of the slice (axis 0 of a (slice, row, column) mask) with the most voxels.

    The first such slice on a tie, so the choice is reproducible.

    Raises:
        OutputError: for an empty or non-3-D mask.
    """
    if mask.ndim != 3:
        raise OutputError(f"largest_slice needs a 3-D mask, got shape {mask.shape}")
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if not counts.any():
        raise OutputError("an empty mask has no largest slice")
    return int(np.argmax(counts))
