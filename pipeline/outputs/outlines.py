"""Closed outlines of a binary slice mask, in DICOM SCOORD pixel coordinates.

Why outlines at all: OHIF 3.13's SR viewport crashes on TID 1500 volume
measurements that only reference a SEG segment and displays those that carry
per-slice SCOORD outlines (docs: stack-notes), so each region's mask is also
written as polygons on the source images.

Coordinates: DICOM 2-D SCOORDs are (column, row) pairs with (0, 0) at the
top-left corner of the top-left pixel, so the centre of pixel (r, c) is
(c + 0.5, r + 0.5) (PS3.3 C.18.6.1.2). ``skimage.measure.find_contours`` traces
the 0.5 iso-line between pixel centres (marching squares), so the outline runs
half-way between a region's edge pixels and their outside neighbours. The mask
is padded by one pixel so contours touching the image border still close.

Holes: a ring (oedema around the core) has an outer and an inner contour; both
are returned as separate closed polygons (the XOR reading RT structures use).
The outlines are for display; volumes always come from the mask.
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
