"""Uploaded DICOM files (the rule tester): headers only, bounded, never stored."""

from __future__ import annotations

import io

from fastapi import UploadFile
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from segnode.node.admin.errors import InvalidInputError

MAX_UPLOAD_FILES = 2000
MAX_HEADER_BYTES = 4 * 2**20
"""Only the first 4 MiB of each file is read: headers live at the start (pixels last)."""


async def read_uploaded_headers(files: list[UploadFile]) -> tuple[list[Dataset], int]:
    """The readable files' headers and the count of unreadable ones."""
    if len(files) > MAX_UPLOAD_FILES:
        raise InvalidInputError(f"at most {MAX_UPLOAD_FILES} files at once")
    headers: list[Dataset] = []
    unreadable = 0
    for upload in files:
        data = await upload.read(MAX_HEADER_BYTES)
        try:
            headers.append(dcmread(io.BytesIO(data), stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
            unreadable += 1
    return headers, unreadable
