"""Reading source and stored DICOM files for byte-level comparisons."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom


def dataset_bytes(file_bytes: bytes) -> bytes:
    """The encoded dataset after the file meta group (which the receiver rewrites)."""
    if file_bytes[128:132] != b"DICM" or file_bytes[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a Part 10 file with a File Meta Information Group Length")
    group_length = struct.unpack("<I", file_bytes[140:144])[0]
    return file_bytes[144 + group_length :]


@dataclass(frozen=True)
class SourceInstance:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str


def index_folder(folder: Path) -> dict[str, SourceInstance]:
    """SOP Instance UID -> source file facts, for every file in ``folder``."""
    index = {}
    for path in sorted(folder.iterdir()):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        index[str(dataset.SOPInstanceUID)] = SourceInstance(
            path,
            str(dataset.SOPInstanceUID),
            str(dataset.SeriesInstanceUID),
            str(dataset.StudyInstanceUID),
            str(dataset.file_meta.TransferSyntaxUID),
        )
    return index
