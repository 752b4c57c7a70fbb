"""Compact, brain-cropped copies of labelled cases: read once, reused by every training run.

Reading and normalising a 240×240×155 BraTS case takes ~2.5 s on 2 cores; a cross-validation
of four recipes over five folds would read the 22 cases ~400 times. A compact case is the
normalised 1 mm brain box (float16, as inference crops it: ``prediction.brain_box``) and its
label map (uint8, 2021 convention), ~40 MB instead of ~180 MB of NIfTI, written once under a
cache folder. It is also what travels to a GPU machine (``scripts/compact-cases``).

The cache key holds the case folder and each source file's size and mtime, so a changed
case is read again; a cache file is written atomically (a crash leaves no half file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segnode.files import atomic_write
from segnode.pipeline.model.labels import labels_to_regions, regions_to_labels
from segnode.pipeline.model.resolution import block_mean
from segnode.pipeline.training.brats_data import BratsCase, load_case
from segnode.pipeline.training.prediction import brain_box
from segnode.vocabulary import CHANNEL_ORDER, LabelConvention, Role

CACHE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class CompactCase:
    """One case's normalised brain box and labels on the 1 mm grid."""

    case_id: str
    image: np.ndarray
    """(C, X, Y, Z) float16, channels in ``channel_order``, z-scored over the brain."""
    labels: np.ndarray | None
    """(X, Y, Z) uint8 BraTS labels, 2021 convention (ET = 4), or None (unlabelled)."""
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    """(start, stop) of the brain box per axis in the case's full grid."""
    full_shape: tuple[int, int, int]
    channel_order: tuple[str, ...]

    def regions(self) -> np.ndarray | None:
        """(3, X, Y, Z) bool WT, TC, ET, or None."""
        return None if self.labels is None else labels_to_regions(self.labels)

    def coarse(self, factor: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(image, region fractions) as float32 block means on the model's grid."""
        regions = self.regions()
        image = block_mean(self.image, factor)
        return image, None if regions is None else block_mean(regions, factor)


def _cache_key(case: BratsCase, channel_order: Sequence[str]) -> str:
    parts = [str(CACHE_FORMAT), str(case.folder.resolve()), ",".join(channel_order)]
    files = [case.path(role) for role in Role] + ([case.label] if case.label else [])
    for path in files:
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def compact_case(case: BratsCase, channel_order: Sequence[str] = CHANNEL_ORDER) -> CompactCase:
    """Read, normalise and crop one case (no cache)."""
    image, regions = load_case(case, channel_order)
    box = brain_box(image)
    crop = image[(slice(None), *box)].astype(np.float16)
    labels = None
    if regions is not None:
        labels = regions_to_labels(regions[(slice(None), *box)], LabelConvention.BRATS_2021)
    spatial = image.shape[1:]
    return CompactCase(
        case_id=case.case_id,
        image=np.ascontiguousarray(crop),
        labels=labels,
        box=tuple((int(s.start), int(s.stop)) for s in box),  # type: ignore[arg-type]
        full_shape=(int(spatial[0]), int(spatial[1]), int(spatial[2])),
        channel_order=tuple(channel_order),
    )


def save_compact(case: CompactCase, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = case.labels if case.labels is not None else np.zeros((0,), np.uint8)

    def write(partial: Path) -> None:
        with partial.open("wb") as handle:
            np.savez(
                handle,
                case_id=np.array(case.case_id),
                image=case.image,
                labels=labels,
                box=np.array(case.box, dtype=np.int64),
                full_shape=np.array(case.full_shape, dtype=np.int64),
                channel_order=np.array(",".join(case.channel_order)),
            )

    atomic_write(path, write)


def load_compact(path: Path) -> CompactCase:
    with np.load(path, allow_pickle=False) as data:
        labels = data["labels"]
        box = [tuple(int(v) for v in row) for row in data["box"]]
        shape = [int(v) for v in data["full_shape"]]
        return CompactCase(
            case_id=str(data["case_id"]),
            image=data["image"],
            labels=labels if labels.size else None,
            box=(box[0], box[1], box[2]),  # type: ignore[arg-type]
            full_shape=(shape[0], shape[1], shape[2]),
            channel_order=tuple(str(data["channel_order"]).split(",")),
        )


def cached_compact_case(
    case: BratsCase, cache_dir: Path | None, channel_order: Sequence[str] = CHANNEL_ORDER
) -> CompactCase:
    """The compact case from ``cache_dir`` when it is there and current, else read and store."""
    if cache_dir is None:
        return compact_case(case, channel_order)
    path = cache_dir / f"{case.case_id}-{_cache_key(case, channel_order)}.npz"
    if path.exists():
        return load_compact(path)
    compact = compact_case(case, channel_order)
    save_compact(compact, path)
    return compact
