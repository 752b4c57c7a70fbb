"""The shared annotation text: glyph-safe strings, wrapping, slice names, legend entries."""

from __future__ import annotations

import copy

import pytest

from segnode.pipeline.conversion import convert_series
from segnode.pipeline.outputs.annotation_text import (
    font,
    legend_entries,
    printable,
    slice_label,
    text_width,
    wrap,
)
from segnode.pipeline.outputs.regions import REGION_COLOURS_RGB, RegionStatistics, RegionVolume
from segnode.pipeline.outputs.source import SourceSeries, load_source_series
from segnode.vocabulary import ALL_REGIONS, Region
from tests.helpers import require_shared_data
from tests.pipeline.outputs.dicom_checks import T1cCase


def test_characters_without_a_glyph_are_replaced() -> None:
    # The degree sign has a glyph in the bundled font; the others would be drawn as boxes.
    assert printable("3.1° × 2 mm² – Müller µl") == "3.1° x 2 mm2 - Muller ul"
    assert printable("\u4e2d") == "?"


def test_wrapped_lines_fit_and_keep_every_word() -> None:
    face = font(11)
    text = "Inter-series motion: FLAIR is 16.2 mm / 3.1° from the T1c (limit 2.0 mm / 2.0°)"
    lines = wrap(text, face, 120)
    assert len(lines) > 1
    assert all(text_width(face, line) <= 120 for line in lines)
    assert " ".join(lines) == text
    first = wrap("x" * 200, face, 50)[0]  # a word longer than the line is cut, not overflowing
    assert 0 < len(first) < 200 and text_width(face, first) <= 50


def test_slices_are_named_by_instance_number(t1c: T1cCase) -> None:
    source = load_source_series(t1c.files, t1c.volume.slices)
    renumbered = []
    for instance in source.instances:
        instance = copy.deepcopy(instance)
        instance.InstanceNumber = 1000 - int(instance.InstanceNumber)
        renumbered.append(instance)
    other = SourceSeries(tuple(renumbered), source.slices)
    for index in (0, 5, len(source.slices) - 1):
        number = int(source.instance_of(index).InstanceNumber)
        assert slice_label(source, index) == f"T1c image {number}"
        assert slice_label(other, index) == f"T1c image {1000 - number}"
    renumbered[3].InstanceNumber = ""  # Type 2: present, may be empty
    unnumbered = SourceSeries(tuple(renumbered), source.slices)
    index = next(
        i
        for i, ref in enumerate(source.slices)
        if ref.sop_instance_uid == str(renumbered[3].SOPInstanceUID)
    )
    assert slice_label(unnumbered, index) == (
        f"T1c slice {index + 1} of {len(source.slices)} (image has no Instance Number)"
    )


@pytest.mark.filterwarnings('ignore:The string "CS-AI Test":UserWarning')
def test_enhanced_mr_frames_are_named_with_their_frame() -> None:
    folder = require_shared_data() / "philips_elitionx_phantom_T1W_TSE_enhanced"
    files = sorted(folder.iterdir())
    volume = convert_series(files)
    source = load_source_series(files, volume.slices)
    number = int(source.first.InstanceNumber)
    for index, ref in enumerate(volume.slices):
        assert slice_label(source, index) == f"T1c image {number}, frame {ref.frame}"


def test_legend_lists_the_drawn_regions_with_colours_then_wt_and_tc() -> None:
    volumes = {Region.WT: 12.5, Region.TC: 4.25, Region.ET: 3.0, Region.NCR: 1.25, Region.ED: 8.25}
    statistics = RegionStatistics(
        1.0,
        tuple(
            RegionVolume(region, int(volumes[region] * 1000), volumes[region])
            for region in ALL_REGIONS
        ),
    )
    entries = legend_entries(statistics)
    assert [entry.text for entry in entries] == [
        "NCR necrosis 1.25 ml",
        "ED edema 8.25 ml",
        "ET enhancing tumor 3.00 ml",
        "WT whole tumor 12.50 ml",
        "TC tumor core 4.25 ml",
    ]
    assert [entry.colour for entry in entries] == [
        REGION_COLOURS_RGB[Region.NCR],
        REGION_COLOURS_RGB[Region.ED],
        REGION_COLOURS_RGB[Region.ET],
        None,
        None,
    ]
