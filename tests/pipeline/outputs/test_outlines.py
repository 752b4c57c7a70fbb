"""Outlines: closed, in DICOM (column, row) pixel coordinates, holes as their own polygons."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import polygon2mask

from segnode.pipeline.outputs import OutputError
from segnode.pipeline.outputs.outlines import (
    largest_slice,
    mask_outlines,
    polygon_area_px,
    representative_outline,
)


def fill(outlines: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill at pixel centres ((column + 0.5, row + 0.5) in SCOORD terms)."""
    filled = np.zeros(shape, dtype=bool)
    for points in outlines:
        filled ^= polygon2mask(shape, np.column_stack([points[:, 1] - 0.5, points[:, 0] - 0.5]))
    return filled


def test_block_outline_runs_along_its_pixel_edges() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:6] = True  # rows 1-2, columns 2-5
    (outline,) = mask_outlines(mask)
    np.testing.assert_array_equal(outline[0], outline[-1])
    columns, rows = outline[:, 0], outline[:, 1]
    # Half-way between edge pixel centres (x.5) and outside ones: pixel edges 2..6, 1..3.
    assert (columns.min(), columns.max(), rows.min(), rows.max()) == (2.0, 6.0, 1.0, 3.0)
    np.testing.assert_array_equal(fill([outline], mask.shape), mask)


def test_ring_gives_outer_and_hole_and_border_pieces_close() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    mask[0, 0] = True  # touches the image corner, and the ring diagonally
    outlines = mask_outlines(mask)
    assert all(np.array_equal(o[0], o[-1]) for o in outlines)
    np.testing.assert_array_equal(fill(outlines, mask.shape), mask)


def test_empty_and_wrong_shape() -> None:
    assert mask_outlines(np.zeros((4, 4), dtype=bool)) == []
    with pytest.raises(OutputError, match="2-D"):
        mask_outlines(np.zeros((2, 2, 2), dtype=bool))


def test_representative_outline_is_the_largest_piece_without_its_hole() -> None:
    """A ring beside a dot: the ring's outer boundary, enclosing the hole; the dot is left out."""
    mask = np.zeros((12, 16), dtype=bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False  # the hole
    mask[9:11, 12:14] = True  # a second, smaller piece
    outline = representative_outline(mask)
    filled = np.zeros_like(mask)
    filled[1:8, 1:8] = True
    np.testing.assert_array_equal(fill([outline], mask.shape), filled)
    # Marching squares cuts each of the 4 convex corners by 1/8 pixel: 49 - 0.5.
    assert polygon_area_px(outline) == pytest.approx(48.5)


def test_largest_slice_is_the_first_with_the_most_voxels() -> None:
    mask = np.zeros((4, 5, 5), dtype=bool)
    mask[1, :2, :2] = True  # 4 voxels
    mask[2, :3, :3] = True  # 9
    mask[3, 2:5, 2:5] = True  # 9, later: not chosen
    assert largest_slice(mask) == 2
    with pytest.raises(OutputError, match="empty"):
        largest_slice(np.zeros((2, 3, 3), dtype=bool))
    with pytest.raises(OutputError, match="empty"):
        representative_outline(np.zeros((3, 3), dtype=bool))
