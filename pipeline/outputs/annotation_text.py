"""What the human-readable outputs (SC band, PDF page) say, and how their text is set.

Why one module: the secondary captures and the PDF must name a slice, a region and a
volume the same way, and both draw text with Pillow's bundled font, so wrapping and
the glyph check live here once.

Slices are named as the viewer names them: by the source image's Instance Number
(OHIF shows it as "I:18"), never by our volume index, whose order a viewer need not
share (a radiologist read "slice 18 of 26" for the image OHIF shows as "I:18 (9/26)").
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache

from PIL import ImageDraw, ImageFont

from segnode.pipeline.outputs.errors import OutputError
from segnode.pipeline.outputs.regions import REGION_COLOURS_RGB, REGION_NAMES, RegionStatistics
from segnode.pipeline.outputs.source import SourceSeries
from segnode.vocabulary import BASE_REGIONS, Region

Rgb = tuple[int, int, int]
Font = ImageFont.FreeTypeFont

#: The legend's order: the drawn regions (with their colour), then the unions WT and TC.
LEGEND_ORDER: tuple[Region, ...] = (*BASE_REGIONS, Region.WT, Region.TC)
#: Stand-ins for characters the bundled font has no glyph for (it covers ASCII and a few
#: signs such as the degree sign); anything else becomes "?".
_REPLACEMENTS = {
    "\u00d7": "x",
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u00b5": "u",
    "\u03bc": "u",
    "\u00b2": "2",
    "\u00b3": "3",
    "\u2264": "<=",
    "\u2265": ">=",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u00df": "ss",
}


@cache
def font(size: int) -> Font:
    """Pillow's bundled font (Aileron) at ``size`` px: no system font is needed on the node.

    Raises:
        OutputError: when Pillow was built without FreeType (its bitmap font has one size).
    """
    face = ImageFont.load_default(size=size)
    if not isinstance(face, ImageFont.FreeTypeFont):
        raise OutputError("Pillow has no FreeType support; the SC and PDF text needs it")
    return face


@cache
def _has_glyph(character: str) -> bool:
    reference = font(20)
    missing = bytes(reference.getmask("\ue000"))  # a private-use code point: the "no glyph" box
    return bytes(reference.getmask(character)) != missing


def printable(text: str) -> str:
    """``text`` with every character the bundled font cannot draw replaced.

    Why: a missing glyph is drawn as an empty box, which a reader takes for a symbol.
    Accents are dropped (NFKD), known signs get an ASCII stand-in, the rest is "?".
    """
    decomposed = unicodedata.normalize("NFKD", text)
    out = []
    for character in decomposed:
        if unicodedata.combining(character):
            continue
        if character in _REPLACEMENTS:
            out.append(_REPLACEMENTS[character])
        elif character == " " or (character.isprintable() and _has_glyph(character)):
            out.append(character)
        else:
            out.append("?")
    return "".join(out)


#: Word spacing as a fraction of the font size: Aileron's own space is about 0.2 em, which
#: hinting rounds to 2 px at band sizes, and words then run together ("T1cimage").
WORD_SPACE_EM = 0.33
Box = tuple[int, int, int, int]


def _space_px(face: Font) -> float:
    return max(face.getlength(" "), round(face.size * WORD_SPACE_EM))


def text_width(face: Font, text: str) -> float:
    """Advance width (px) of ``text`` as :func:`draw_text` sets it."""
    words = text.split(" ")
    return sum(face.getlength(word) for word in words) + _space_px(face) * (len(words) - 1)


def text_box(face: Font, xy: tuple[int, int], text: str) -> Box:
    """The ink box :func:`draw_text` gives ``text`` at ``xy`` (left, top, right, bottom)."""
    _, top, _, bottom = face.getbbox("Xg")
    left = face.getbbox(text)[0] if text else 0
    return (
        xy[0] + int(left),
        xy[1] + int(top),
        xy[0] + round(text_width(face, text)),
        xy[1] + int(bottom),
    )


def draw_text(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, face: Font, fill: Rgb
) -> Box:
    """Draw ``text`` word by word with readable spacing; returns its :func:`text_box`."""
    x = float(xy[0])
    for word in text.split(" "):
        if word:
            draw.text((round(x), xy[1]), word, font=face, fill=fill)
        x += face.getlength(word) + _space_px(face)
    return text_box(face, xy, text)


def wrap(text: str, face: Font, width_px: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width_px`` (a long word is cut)."""
    lines: list[str] = []
    current = ""
    for word in printable(text).split():
        candidate = f"{current} {word}" if current else word
        if text_width(face, candidate) <= width_px:
            current = candidate
            continue
        if current:
            lines.append(current)
        while face.getlength(word) > width_px and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and face.getlength(word[:cut]) > width_px:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current or not lines:
        lines.append(current)
    return lines


def slice_label(source: SourceSeries, index: int) -> str:
    """The T1c image of label slice ``index`` as a viewer names it, e.g. "T1c image 18".

    Enhanced MR (one instance, many frames) adds the frame: "T1c image 1, frame 18".
    An image without Instance Number (Type 2, may be empty) is named by its place in
    our slice order and says so.
    """
    instance = source.instance_of(index)
    number = instance.get("InstanceNumber")
    if number is None or str(number).strip() == "":
        label = f"T1c slice {index + 1} of {len(source.slices)} (image has no Instance Number)"
    else:
        label = f"T1c image {int(number)}"
    if source.is_multiframe:
        label += f", frame {source.slices[index].frame}"
    return label


def format_ml(volume_ml: float) -> str:
    """A volume as the SR and the PDF table give it: millilitres, two decimals."""
    return f"{volume_ml:.2f} ml"


@dataclass(frozen=True, slots=True)
class LegendEntry:
    """One region in a legend: its colour (None for the unions WT and TC, which are not
    drawn), its reader name and its volume."""

    region: Region
    colour: Rgb | None
    text: str


def legend_entries(statistics: RegionStatistics) -> tuple[LegendEntry, ...]:
    """NCR, ED, ET (each with its colour), then WT and TC: "NCR necrosis 1.23 ml"."""
    return tuple(
        LegendEntry(
            region,
            REGION_COLOURS_RGB.get(region),
            f"{REGION_NAMES[region]} {format_ml(statistics[region].volume_ml)}",
        )
        for region in LEGEND_ORDER
    )
