"""The Part 10 file meta the listener writes in front of each received dataset.

Why by hand rather than pydicom's ``write_file_meta_info``: the UIDs come from
the peer's C-STORE command and may be anything (a garbage SOP Instance UID is
exactly what must still reach the quarantine), and pydicom's writer validates
them and raises. This writes the same elements without judging them; the
receiver judges afterwards. Group 0002 is explicit VR little endian (PS3.10 7.1).
"""

from __future__ import annotations

import struct

from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

PREAMBLE = b"\x00" * 128 + b"DICM"
_LONG_VRS = frozenset({"OB"})


def _element(element: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", 0x0002, element, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr.encode(), len(value)) + value


def _text(value: str, limit: int) -> bytes:
    return value.strip().encode("ascii", "replace")[:limit]


def part10_bytes(
    *,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    source_ae_title: str,
    dataset: bytes,
) -> bytes:
    """Preamble, "DICM", file meta (with its group length) and ``dataset`` as sent."""
    meta = (
        _element(0x0001, "OB", b"\x00\x01")
        + _element(0x0002, "UI", _text(sop_class_uid, 64))
        + _element(0x0003, "UI", _text(sop_instance_uid, 64))
        + _element(0x0010, "UI", _text(transfer_syntax_uid, 64))
        + _element(0x0012, "UI", PYDICOM_IMPLEMENTATION_UID.encode())
        + _element(0x0016, "AE", _text(source_ae_title, 16))
    )
    return PREAMBLE + _element(0x0000, "UL", struct.pack("<L", len(meta))) + meta + dataset
