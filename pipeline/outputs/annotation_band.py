"""The annotation band above each secondary capture: what it says, where each text goes.

Why a band: text burned over the image hid anatomy (a finding lay under the model
line), so the secondary captures keep every image pixel and put the text in extra
black rows above the image. Top down: "NOT FOR CLINICAL USE" centred on a red bar
(top centre, because OHIF draws its overlays in the viewport corners and its cine
bar at the bottom centre), the slice as the viewer names it (the source Instance
Number, "T1c image 18"), a legend (colour, region name, volume in ml, with WT and
TC), the quality headline and flags (``QualityReport.lines()``, wrapped), and the
algorithm and model.

The band grows with its text up to a bound (the image's own height); whole flags
that do not fit are summarised in one line pointing to the PDF and SR. The layout
is computed first and drawn second, so the tests can read what is drawn where.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from segnode.pipeline.outputs.annotation_text import (
    Box,
    Font,
    LegendEntry,
    Rgb,
    draw_text,
    font,
    legend_entries,
    printable,
    slice_label,
    text_box,
    text_width,
    wrap,
)
from segnode.pipeline.outputs.errors import OutputError
from segnode.pipeline.outputs.provenance import AlgorithmProvenance
from segnode.pipeline.outputs.regions import RegionStatistics
from segnode.pipeline.outputs.source import SourceSeries
from segnode.pipeline.quality.record import QualityReport

WARNING_TEXT = "NOT FOR CLINICAL USE"
#: Band text height: one pixel per this many image columns (a 256-column image: 9 px),
#: so the text keeps its size relative to the image however the viewer zooms.
COLUMNS_PER_FONT_PX = 28
MIN_FONT_PX = 9
BAND_BACKGROUND: Rgb = (0, 0, 0)
WARNING_BAR: Rgb = (200, 0, 0)
WHITE: Rgb = (255, 255, 255)
#: The quality headline when a flag is raised (amber) and when none is (grey).
REVIEW_COLOUR: Rgb = (255, 190, 0)
CALM_COLOUR: Rgb = (170, 170, 170)
UNION_COLOUR: Rgb = (200, 200, 200)
ALGORITHM_COLOUR: Rgb = (150, 150, 150)
SEPARATOR: Rgb = (90, 90, 90)


@dataclass(frozen=True, slots=True)
class BandText:
    """What one image's band says, before layout (the tests read it)."""

    slice_label: str
    legend: tuple[LegendEntry, ...]
    quality: tuple[str, ...]
    """``QualityReport.lines()``: the headline, then one line per flag."""
    review_recommended: bool
    algorithm: str
    note: str | None = None
    """E.g. "no tumour segmented"."""
    warning: str = WARNING_TEXT


def band_text(
    source: SourceSeries,
    index: int,
    statistics: RegionStatistics,
    provenance: AlgorithmProvenance,
    quality: QualityReport,
) -> BandText:
    """The band of slice ``index``'s image."""
    return BandText(
        slice_label=slice_label(source, index),
        legend=legend_entries(statistics),
        quality=tuple(quality.lines()),
        review_recommended=quality.review_recommended,
        algorithm=(
            f"{provenance.algorithm_name} {provenance.algorithm_version}, "
            f"model {provenance.model_label}"
        ),
        note="no tumour segmented" if statistics.is_empty else None,
        warning=provenance.intended_use,
    )


@dataclass(frozen=True, slots=True)
class BandItem:
    """One text drawn in the band: where (its ink box) and in which colour."""

    text: str
    xy: tuple[int, int]
    box: Box
    colour: Rgb
    size: int


@dataclass(frozen=True, slots=True)
class BandLayout:
    """Where everything in one band goes; ``height`` is the rows the band needs."""

    width: int
    height: int
    warning_bar: Box
    items: tuple[BandItem, ...]
    swatches: tuple[tuple[Box, Rgb], ...]
    omitted_flags: int
    """Quality flags left out because the band reached its bound (they are in the PDF and SR)."""


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    x: int
    colour: Rgb
    swatch: Rgb | None = None


def band_font_px(columns: int) -> int:
    """The band's text size for an image ``columns`` wide."""
    return max(MIN_FONT_PX, round(columns / COLUMNS_PER_FONT_PX))


def _centred(lines: Sequence[str], face: Font, width: int, colour: Rgb) -> list[list[_Piece]]:
    return [
        [_Piece(line, max(0, round((width - text_width(face, line)) / 2)), colour)]
        for line in lines
    ]


def _legend_rows(
    entries: Sequence[LegendEntry], face: Font, size: int, width: int, margin: int
) -> list[list[_Piece]]:
    """Legend entries flowed into centred rows: swatch, then "NCR necrosis 1.23 ml"."""
    swatch_px, gap_px = size, round(size * 1.2)
    widths = [
        (swatch_px + size // 3 if entry.colour else 0)
        + round(text_width(face, printable(entry.text)))
        for entry in entries
    ]
    rows: list[list[int]] = [[]]
    used = 0
    for number, entry_width in enumerate(widths):
        extra = entry_width + (gap_px if rows[-1] else 0)
        if rows[-1] and used + extra > width - 2 * margin:
            rows.append([])
            used, extra = 0, entry_width
        rows[-1].append(number)
        used += extra
    laid_out: list[list[_Piece]] = []
    for row in rows:
        total = sum(widths[n] for n in row) + gap_px * (len(row) - 1)
        x = max(margin, round((width - total) / 2))
        pieces = []
        for n in row:
            entry = entries[n]
            pieces.append(
                _Piece(
                    printable(entry.text),
                    x + (swatch_px + size // 3 if entry.colour else 0),
                    WHITE if entry.colour else UNION_COLOUR,
                    entry.colour,
                )
            )
            x += widths[n] + gap_px
        laid_out.append(pieces)
    return laid_out


def layout_band(text: BandText, width: int, max_height: int) -> BandLayout:
    """Lay the band of an image ``width`` columns wide out, in at most ``max_height`` rows.

    Lines are never dropped from the warning, the slice, the legend, the quality
    headline or the algorithm (so a very small image may get a taller band than
    ``max_height``); when they and the flags do not fit, whole flags from the last
    give way to one line saying how many more there are and where to read them.
    """
    size = band_font_px(width)
    face = font(size)
    warning_size = round(size * 1.35)
    warning_face = font(warning_size)
    margin = max(3, size // 2)
    line_px = sum(face.getmetrics()) + max(1, size // 5)
    inner = width - 2 * margin

    head = _centred(
        [
            *wrap(text.slice_label, face, inner),
            *(wrap(text.note, face, inner) if text.note else []),
        ],
        face,
        width,
        WHITE,
    )
    head += _legend_rows(text.legend, face, size, width, margin)
    headline, *flags = text.quality or ("",)
    headline_lines = [
        [_Piece(line, margin, REVIEW_COLOUR if text.review_recommended else CALM_COLOUR)]
        for line in wrap(headline, face, inner)
    ]
    indent = margin + size
    flag_blocks = [
        [
            [_Piece(line, margin if number == 0 else indent, WHITE)]
            for number, line in enumerate(wrap(flag, face, inner - size))
        ]
        for flag in flags
    ]
    tail = [[_Piece(line, margin, ALGORITHM_COLOUR)] for line in wrap(text.algorithm, face, inner)]

    bar_px = sum(warning_face.getmetrics()) + 2 * max(2, size // 3)
    fixed_px = (
        bar_px + margin + line_px * (len(head) + len(headline_lines) + len(tail)) + margin + 1
    )
    room = max(0, (max_height - fixed_px) // line_px)
    flag_lines: list[list[_Piece]] = [line for block in flag_blocks for line in block]
    omitted = 0
    if len(flag_lines) > room:
        # Whole flags only, keeping one line to say how many more there are.
        flag_lines = []
        shown = 0
        for block in flag_blocks:
            if len(flag_lines) + len(block) > room - 1:
                break
            flag_lines += block
            shown += 1
        omitted = len(flag_blocks) - shown
        more = f"+ {omitted} more quality flag{'s' if omitted != 1 else ''}: see the PDF or SR"
        if room:
            flag_lines.append([_Piece(wrap(more, face, inner)[0], margin, REVIEW_COLOUR)])

    items: list[BandItem] = []
    swatches: list[tuple[Box, Rgb]] = []
    warning = printable(text.warning)
    warning_xy = (max(0, round((width - text_width(warning_face, warning)) / 2)), max(2, size // 3))
    items.append(_item(warning, warning_xy, warning_face, warning_size, WHITE))
    y = bar_px + margin
    _, cap_top, _, cap_bottom = (int(v) for v in face.getbbox("X"))
    for line in [*head, *headline_lines, *flag_lines, *tail]:
        for piece in line:
            items.append(_item(piece.text, (piece.x, y), face, size, piece.colour))
            if piece.swatch is not None:
                left = piece.x - size - size // 3
                swatches.append(
                    ((left, y + cap_top - 1, left + size - 1, y + cap_bottom), piece.swatch)
                )
        y += line_px
    return BandLayout(
        width=width,
        height=y + margin + 1,
        warning_bar=(0, 0, width - 1, bar_px - 1),
        items=tuple(items),
        swatches=tuple(swatches),
        omitted_flags=omitted,
    )


def _item(text: str, xy: tuple[int, int], face: Font, size: int, colour: Rgb) -> BandItem:
    return BandItem(text, xy, text_box(face, xy, text), colour, size)


def draw_band(layout: BandLayout, height: int) -> NDArray[np.uint8]:
    """The band as RGB (height, width, 3); ``height`` >= ``layout.height`` pads below the text.

    The band's last row is a grey separator line, so the image's top edge is visible
    even where the image itself is black.
    """
    if height < layout.height:
        raise OutputError(f"band of {layout.height} rows cannot be drawn in {height} rows")
    band = Image.new("RGB", (layout.width, height), BAND_BACKGROUND)
    draw = ImageDraw.Draw(band)
    draw.rectangle(layout.warning_bar, fill=WARNING_BAR)
    for box, colour in layout.swatches:
        draw.rectangle(box, fill=colour, outline=WHITE)
    for item in layout.items:
        draw_text(draw, item.xy, item.text, font(item.size), item.colour)
    draw.line((0, height - 1, layout.width - 1, height - 1), fill=SEPARATOR)
    return np.asarray(band, dtype=np.uint8)
