"""The viewer test's judges can fail: a misplaced overlay, a wrong volume, a console error.

No browser: synthetic canvases and panel rows (tests/viewer/checks.py), so this runs in the fast lane.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from segnode.vocabulary import Region
from tests.viewer import checks

SPACING_MM = 0.9375
PX_PER_PIXEL = 4.2  # what OHIF's 1600 x 1000 layout gives a 256-column MR image


def tumour_slice(mask: NDArray[np.bool_]) -> checks.TumourSlice:
    geometry = checks.SliceGeometry(np.array([-120.0, -100.0, 30.0]), np.array([1.0, 0.0, 0.0]),
                                    np.array([0.0, 1.0, 0.0]), SPACING_MM, SPACING_MM)
    return checks.TumourSlice("1.2.3", "1.2", geometry, mask, float(mask.sum()) * SPACING_MM**2)


def blob() -> NDArray[np.bool_]:
    """An ellipse of about 10 x 7 mm radii in a 64 x 64 image."""
    rows, columns = np.mgrid[0:64, 0:64]
    return np.asarray((rows - 30) ** 2 / 120 + (columns - 28) ** 2 / 60 < 1, dtype=bool)


def mapping() -> checks.CanvasMapping:
    # worldToCanvas of the three reference points: pixel (0, 0) at (101.3, 2.1), 4.2 px a pixel.
    return checks.CanvasMapping.from_points([[101.3, 2.1], [101.3 + PX_PER_PIXEL, 2.1], [101.3, 2.1 + PX_PER_PIXEL]])


def rendered(tmp_path: Path, mask: NDArray[np.bool_], shift_mm: float = 0.0) -> NDArray[np.bool_]:
    """A canvas PNG as OHIF draws it: grey MR, the mask in a segment colour, read back."""
    shape = (300, 1400)
    overlay = checks.expected_on_canvas(mask, mapping(), shape, shift_columns=shift_mm / SPACING_MM)
    canvas = np.full((*shape, 3), 90, dtype=np.uint8)
    canvas[overlay] = (200, 60, 50)
    path = tmp_path / "canvas.png"
    Image.fromarray(canvas).save(path)
    return checks.coloured_pixels(path)


def test_an_overlay_where_the_seg_says_passes(tmp_path: Path) -> None:
    mask = blob()
    verdict = checks.judge_overlay(rendered(tmp_path, mask), tumour_slice(mask), mapping())
    assert verdict.problems() == []
    assert verdict.dice == pytest.approx(1.0)


@pytest.mark.parametrize("shift_mm", [10.0, 30.0, -40.0])
def test_an_overlay_offset_by_centimetres_fails(tmp_path: Path, shift_mm: float) -> None:
    mask = blob()
    verdict = checks.judge_overlay(rendered(tmp_path, mask, shift_mm), tumour_slice(mask), mapping())
    assert any("centroid" in problem for problem in verdict.problems()), verdict
    assert verdict.centroid_mm == pytest.approx(abs(shift_mm), abs=1.0)


def test_no_overlay_at_all_fails(tmp_path: Path) -> None:
    mask = blob()
    verdict = checks.judge_overlay(rendered(tmp_path, np.zeros_like(mask)), tumour_slice(mask), mapping())
    assert len(verdict.problems()) == 2, verdict  # Dice 0 and no centroid


def test_the_probe_flags_a_check_that_cannot_see_an_offset(tmp_path: Path) -> None:
    # A "tumour" 28 cm wide: moved 3 cm, it still overlaps itself by 90 %.
    mask = np.ones((64, 300), dtype=bool)
    verdict = checks.judge_overlay(rendered(tmp_path, mask), tumour_slice(mask), mapping())
    assert any("proves nothing" in problem for problem in verdict.problems())


VOLUMES = {Region.WT: 79.3512, Region.TC: 49.9731, Region.ET: 12.3076, Region.NCR: 37.6655, Region.ED: 29.3781}


def rows(texts: list[str]) -> list[checks.PanelRow]:
    return [checks.PanelRow(text.split("\n")[0], tuple(text.split("\n")[1:]), text) for text in texts]


def panel(volumes: dict[Region, float]) -> list[checks.PanelRow]:
    names = {Region.WT: "whole tumor", Region.TC: "tumor core", Region.ET: "enhancing tumor",
             Region.NCR: "necrosis", Region.ED: "edema"}
    return rows([f"{region.value} {names[region]}\n{value:.2f} ml" for region, value in volumes.items()])


def test_a_panel_with_every_region_and_its_volume_passes() -> None:
    assert checks.panel_problems(panel(VOLUMES), VOLUMES) == []


def test_a_panel_showing_a_wrong_volume_fails() -> None:
    shown = {**VOLUMES, Region.ET: 12.32}
    assert checks.panel_problems(panel(shown), VOLUMES) == [
        "ET: the panel row 'ET enhancing tumor\\n12.32 ml' does not show 12.31 ml"]


def test_a_panel_missing_a_region_or_listing_it_twice_fails() -> None:
    missing: dict[Region, float] = {region: value for region, value in VOLUMES.items() if region is not Region.NCR}
    assert checks.panel_problems(panel(missing), VOLUMES) == [
        "NCR: 0 rows in the measurement panel name it, expected 1"]
    twice = panel(VOLUMES) + rows(["ED edema\n29.38 ml"])
    assert checks.panel_problems(twice, VOLUMES) == ["ED: 2 rows in the measurement panel name it, expected 1"]


def test_an_empty_panel_fails_for_every_region() -> None:
    assert len(checks.panel_problems([], VOLUMES)) == 5


def test_rows_that_name_no_region_fail() -> None:
    problems = checks.panel_problems(panel(VOLUMES) + rows(["Length\n12.0 mm"]), VOLUMES)
    assert problems == ["the panel lists rows that name no region: ['Length\\n12.0 mm']"]


def test_console_errors_fail_and_warnings_do_not() -> None:
    entries: list[dict[str, Any]] = [{"type": "warning", "text": "Image not found"},
                                     {"type": "error", "text": "boom", "at": 3.0}]
    assert checks.console_problems(entries, []) == ["console error at 3.0 s: boom"]
    assert checks.console_problems([], [{"text": "TypeError: x", "at": 1.0}]) == [
        "uncaught page error at 1.0 s: TypeError: x"]
    noise = (checks.BenignNoise(re.compile("boom"), "understood"),)
    assert checks.console_problems(entries, [], noise) == []
