"""The result preview for the dashboard: key T1c slices with the regions drawn, as PNGs.

Why here, in the write step: the preview needs the T1c's pixels and the label map, which
the job folder keeps only until the job is done (``Workspace.prune_intermediates``), and
the web process never loads pixels. So the pictures are drawn once, beside the DICOM
results, by the same renderer as the secondary captures (``render_slice``), and the web
only serves the files that ``preview.json`` lists.

Which slices: the one with the largest whole-tumour area (the key slice of the PDF) and
the slices a third of the way in from each end of the tumour's extent, at most three; the
middle slice for an empty result. No text is burned in: the page shows the legend, the
volumes and "not for clinical use" beside them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from segnode.pipeline.outputs.pdf_report import key_slice
from segnode.pipeline.outputs.regions import RegionStatistics
from segnode.pipeline.outputs.secondary_capture import display_window, render_slice, slices_to_show
from segnode.pipeline.outputs.source import SourceSeries
from segnode.pipeline.quality.record import QualityReport
from segnode.vocabulary import ALL_REGIONS, BASE_REGIONS, Region

PREVIEW_INDEX = "preview.json"
MAX_IMAGES = 3


def preview_slices(wt_mask: NDArray[np.bool_]) -> list[int]:
    """The key slice first, then up to two more spread over the tumour's extent."""
    key = key_slice(wt_mask)
    with_tumour = slices_to_show(wt_mask)
    if not wt_mask.any():
        return [key]
    low, high = with_tumour[0], with_tumour[-1]
    spread = [low + (high - low) // 3, low + 2 * (high - low) // 3]
    chosen = [key]
    for index in spread:
        if index not in chosen and len(chosen) < MAX_IMAGES:
            chosen.append(index)
    return chosen


def write_preview(
    source: SourceSeries,
    masks: Mapping[Region, NDArray[np.bool_]],
    statistics: RegionStatistics,
    quality: QualityReport,
    folder: Path,
) -> Path:
    """Write ``slice-<index>.png`` for each preview slice and ``preview.json``; the index's path."""
    folder.mkdir(parents=True, exist_ok=True)
    indices = preview_slices(masks[Region.WT])
    planes = [source.slice_pixels(index) for index in indices]
    window = display_window(planes)
    images = []
    for index, pixels in zip(indices, planes, strict=True):
        picture = render_slice(pixels, {region: masks[region][index] for region in BASE_REGIONS}, window)
        name = f"slice-{index}.png"
        temporary = folder / f".{name}.tmp"
        Image.fromarray(picture, mode="RGB").save(temporary, format="PNG", optimize=True)
        temporary.replace(folder / name)
        instance = source.instance_of(index)
        images.append(
            {
                "file": name,
                "slice_index": index,
                "instance_number": int(instance.InstanceNumber) if "InstanceNumber" in instance else None,
                "sop_instance_uid": source.slices[index].sop_instance_uid,
                "tumour_voxels": int(masks[Region.WT][index].sum()),
            }
        )
    index_path = folder / PREVIEW_INDEX
    temporary = folder / f".{PREVIEW_INDEX}.tmp"
    temporary.write_text(
        json.dumps(
            {
                "images": images,
                "volumes_ml": {region.value: round(statistics[region].volume_ml, 2) for region in ALL_REGIONS},
                "review_recommended": quality.review_recommended,
                "flags": [{"check": str(flag.check), "summary": flag.summary} for flag in quality.flags],
            },
            indent=2,
        )
    )
    temporary.replace(index_path)
    return index_path
