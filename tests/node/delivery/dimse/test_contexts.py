"""Which presentation contexts the sender proposes, and reading the files' headers (``dimse.contexts``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom.sop_class import MRImageStorage, SegmentationStorage  # type: ignore[attr-defined]

from segnode.node.delivery.dimse.contexts import FileHeader, read_headers, requested_contexts
from segnode.node.delivery.outcome import PermanentDeliveryError


def test_contexts_offer_each_files_own_syntax_and_little_endian_fallbacks_separately() -> None:
    seg, mr = UID(SegmentationStorage), UID(MRImageStorage)
    headers = [
        FileHeader(Path("seg.dcm"), seg, "1.1", ExplicitVRLittleEndian),
        FileHeader(Path("a.dcm"), mr, "1.2", ImplicitVRLittleEndian),
        FileHeader(Path("b.dcm"), mr, "1.3", JPEG2000Lossless),
        FileHeader(Path("c.dcm"), mr, "1.4", ImplicitVRLittleEndian),
        FileHeader(Path("d.dcm"), mr, "1.5", ExplicitVRBigEndian),
        FileHeader(Path("e.dcm"), seg, "1.6", DeflatedExplicitVRLittleEndian),
    ]
    proposed = [(str(cx.abstract_syntax), list(cx.transfer_syntax)) for cx in requested_contexts(headers)]
    assert proposed == [
        (seg, [ExplicitVRLittleEndian]),
        (seg, [DeflatedExplicitVRLittleEndian]),
        (mr, [ImplicitVRLittleEndian]),
        (mr, [JPEG2000Lossless]),  # compressed: never transcoded, no fallback
        (mr, [ExplicitVRBigEndian]),  # pynetdicom cannot change endianness
        (seg, [ImplicitVRLittleEndian]),
        (mr, [ExplicitVRLittleEndian]),
    ]


def test_unreadable_file_is_permanent(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(PermanentDeliveryError, match="cannot read result file junk.dcm") as caught:
        read_headers("pacs", [junk])
    assert caught.value.cause == "invalid-file"
