"""Reading a folder of DICOM files into per-study, per-series sequence facts.

Used by ``segnode inspect`` (and ``segnode run`` later) where a study comes from
disk instead of the network. Headers only: pixel data is not read.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from segnode.pipeline.sequence_facts import SequenceFacts, facts_from_datasets


def read_headers(path: Path) -> tuple[dict[str, dict[str, list[tuple[Path, Dataset]]]], int]:
    """``{study uid: {series uid: [(file, header), ...]}}`` and the count of unreadable files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    studies: dict[str, dict[str, list[tuple[Path, Dataset]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    unreadable = 0
    for file in files:
        try:
            header = dcmread(file, stop_before_pixels=True)
            study, series = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
        except (InvalidDicomError, OSError, ValueError, AttributeError):
            unreadable += 1
            continue
        studies[study][series].append((file, header))
    return studies, unreadable


def read_study_folder(path: Path) -> tuple[dict[str, list[SequenceFacts]], int]:
    """Sequence facts per study found under ``path``."""
    studies, unreadable = read_headers(path)
    return (
        {
            study: [
                facts_from_datasets([header for _, header in items]) for items in series.values()
            ]
            for study, series in studies.items()
        },
        unreadable,
    )
