"""Which presentation contexts to propose for a set of files, and which files an association can carry.

Each distinct (SOP Class, transfer syntax) of the files gets its own context
proposing exactly that SOP class and syntax, never the long list pynetdicom's
``StoragePresentationContexts`` would offer (DCMTK's ``storescu`` needs ``-R``
for SEG/SR for the same reason). A little endian uncompressed or deflated
file's class also gets a context with Explicit/Implicit VR Little Endian, used
only when the peer refuses the file's own syntax; pynetdicom re-encodes to
them without touching values. Compressed pixel data and big endian files are
never converted: a peer that refuses their syntax gets nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from segnode.node.delivery.outcome import PermanentDeliveryError

MAX_PRESENTATION_CONTEXTS = 128  # PS3.8 9.3.2: context IDs are odd numbers 1-255
# pynetdicom re-encodes between these (VR explicit <-> implicit, deflated -> inflated)
# without touching values; it never converts endianness or compressed pixel data.
LITTLE_ENDIAN_NATIVE = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
UNCOMPRESSED_FALLBACKS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class FileHeader:
    """What negotiation needs to know about one file (read without pixel data)."""

    path: Path
    sop_class_uid: UID
    sop_instance_uid: str
    transfer_syntax_uid: UID

    @property
    def acceptable_syntaxes(self) -> tuple[UID, ...]:
        """The file's own syntax, then what it can be re-encoded to without transcoding."""
        if self.transfer_syntax_uid not in LITTLE_ENDIAN_NATIVE:
            return (self.transfer_syntax_uid,)  # compressed, or (retired) big endian
        fallbacks = tuple(uid for uid in UNCOMPRESSED_FALLBACKS if uid != self.transfer_syntax_uid)
        return (self.transfer_syntax_uid, *fallbacks)


def read_headers(destination: str, files: Sequence[Path]) -> list[FileHeader]:
    """Read SOP class, instance and transfer syntax of every file.

    Raises:
        PermanentDeliveryError: a file is missing, not DICOM Part 10, or lacks
            its SOP or transfer syntax UIDs (sending it again cannot help).
    """
    headers = []
    for path in files:
        try:
            dataset = dcmread(path, stop_before_pixels=True)
            header = FileHeader(
                path=Path(path),
                sop_class_uid=UID(dataset.SOPClassUID),
                sop_instance_uid=str(dataset.SOPInstanceUID),
                transfer_syntax_uid=UID(dataset.file_meta.TransferSyntaxUID),
            )
        except (OSError, InvalidDicomError, AttributeError, KeyError) as exc:
            raise PermanentDeliveryError(
                destination,
                f"cannot read result file {path.name}: {exc}; the job's output must be rewritten",
                cause="invalid-file",
            ) from exc
        headers.append(header)
    return headers


def requested_contexts(headers: Sequence[FileHeader]) -> list[PresentationContext]:
    """The contexts to propose for these files, in file order.

    One context per distinct (SOP class, transfer syntax) offering exactly that
    syntax, then per SOP class one context with the Little Endian fallbacks no
    file of that class has natively. Separate contexts because an acceptor
    picks from a context's syntaxes by its own preference (DCMTK storescp and
    Orthanc 1.10.1 both took Explicit VR from [Implicit, Explicit]), and
    pynetdicom sends on an exact match whenever one was accepted.
    """
    own: dict[UID, list[UID]] = {}
    fallbacks: dict[UID, list[UID]] = {}
    for header in headers:
        syntaxes = own.setdefault(header.sop_class_uid, [])
        if header.transfer_syntax_uid not in syntaxes:
            syntaxes.append(header.transfer_syntax_uid)
        extra = fallbacks.setdefault(header.sop_class_uid, [])
        extra.extend(uid for uid in header.acceptable_syntaxes[1:] if uid not in extra)
    contexts = [
        build_context(sop_class, syntax)
        for sop_class, syntaxes in own.items()
        for syntax in syntaxes
    ]
    for sop_class, extra in fallbacks.items():
        missing: list[str | UID] = [uid for uid in extra if uid not in own[sop_class]]
        if missing:
            contexts.append(build_context(sop_class, missing))
    return contexts


def missing_contexts(assoc: Association, headers: Sequence[FileHeader]) -> list[str]:
    """Which kinds of file (SOP class in transfer syntax) no accepted context carries.

    Mirrors pynetdicom's choice in ``send_c_store``: an accepted context of the
    file's SOP class in its own syntax or in one of its fallbacks.
    """
    accepted = {
        (UID(str(cx.abstract_syntax)), UID(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
    }
    missing = []
    for header in headers:
        if not any((header.sop_class_uid, ts) in accepted for ts in header.acceptable_syntaxes):
            label = f"{header.sop_class_uid.name} in {header.transfer_syntax_uid.name}"
            if label not in missing:
                missing.append(label)
    return missing
