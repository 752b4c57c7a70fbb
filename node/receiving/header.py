"""Reading and checking the header of a received instance.

Why parse in the C-STORE handler at all: grouping needs the Study and Series
Instance UIDs, which are only in the dataset, and an instance the pipeline
could not read later must be refused now, while the sender is still there to
hear it. Success promises a valid instance, so before it:

* the dataset's bytes parse exactly to their end in the negotiated transfer
  syntax, with no group 0002 inside (:mod:`segnode.node.receiving.encoded_dataset`); a deflated
  dataset is inflated under a size cap first;
* the SOP class agrees between context, command and dataset;
* the pixel module agrees with Pixel Data (:mod:`segnode.node.receiving.pixel_check`);
* the attributes the node reads decode; optional ones that do not (a
  SeriesNumber of ``abc``) are recorded as absent, required ones refuse.

Reasons never quote a value from the dataset (an overrunning element can carry
the patient's name into any message): they name attributes, counts and offsets.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from segnode.node.errors import InvalidInstanceError
from segnode.node.receiving.encoded_dataset import (
    PIXEL_DATA_TAGS,
    MalformedDatasetError,
    file_meta_end,
    walk_dataset,
)
from segnode.node.receiving.pixel_check import PixelModuleError, check_pixel_data
from segnode.pipeline.sequence_facts import ENHANCED_MR_STORAGE, enhanced_attributes
from segnode.storage.errors import UnsafeUidError
from segnode.storage.filestore import check_uid

STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_OUT_OF_RESOURCES = 0xA700
DEFAULT_MAX_DATASET_BYTES = 512 * 1024 * 1024
_FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")

# Attributes captured per series from its first instance: routing rules and
# sequence identification read them from the database, not from files.
CAPTURED_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "SeriesNumber",
    "SeriesTime",
    "AcquisitionTime",
    "ImageType",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "EchoTrainLength",
    "ContrastBolusAgent",
    "SliceThickness",
    "SpacingBetweenSlices",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PatientPosition",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "SOPClassUID",
    "DiffusionBValue",
)


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    attributes: dict[str, Any]
    patient_key: str
    """A hash of the patient's identity (see :func:`patient_key`): compared, never shown."""


def _refuse(reason: str, status: int = STATUS_CANNOT_UNDERSTAND) -> InvalidInstanceError:
    return InvalidInstanceError(status, reason)


def _value(dataset: Dataset, keyword: str) -> Any:
    """An attribute's decoded value, or None when absent or undecodable (never raises)."""
    try:
        element = dataset.get(keyword)
        return element
    except Exception:  # noqa: BLE001 - a hostile value must not escape the handler
        return None


def _json_value(value: Any) -> Any:
    if isinstance(value, MultiValue):
        return [str(item) for item in value]
    if isinstance(value, bytes | bytearray) or isinstance(value, list):
        return None
    return str(value)


def capture_attributes(dataset: Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    """The given keywords' values as JSON-friendly strings (lists when multi-valued).

    An attribute whose value does not decode is left out, as if absent.
    """
    captured: dict[str, Any] = {}
    for keyword in keywords:
        try:
            element = dataset.get(keyword)
            if element is None or element == "":
                continue
            value = _json_value(element)
        except Exception:  # noqa: BLE001 - undecodable optional attribute
            continue
        if value is not None:
            captured[keyword] = value
    return captured


def _with_enhanced(dataset: Dataset, sop_class: str, captured: dict[str, Any]) -> dict[str, Any]:
    """Enhanced MR keeps TR/TE/TI in functional groups: capture them under the classic names.

    The functional groups must be sequences that decode: conversion reads the
    per-frame geometry from them, so an instance without readable groups is refused.
    """
    if sop_class != ENHANCED_MR_STORAGE:
        return captured
    for keyword in _FUNCTIONAL_GROUPS:
        if keyword not in dataset:
            raise _refuse(f"Enhanced MR without {keyword}")
        if dataset[keyword].VR != "SQ":
            raise _refuse(f"{keyword} is not encoded as a sequence")
    try:
        return {**enhanced_attributes(dataset), **captured}
    except Exception as exc:  # noqa: BLE001 - any decoding failure refuses the instance
        raise _refuse(
            f"Enhanced MR functional groups cannot be decoded ({type(exc).__name__})"
        ) from exc


def _raw_text(dataset: Dataset, keyword: str) -> str | None:
    """An element's value as ASCII text straight from its bytes, or None when absent.

    Why not pydicom's conversion: its validation warnings quote the value, and
    an overrunning UID's value is the neighbouring elements (the patient's name).
    """
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in dataset:
        return None
    value = dataset.get_item(tag).value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").rstrip("\x00 ").strip()
    return str(value).strip()


def _required_uid(dataset: Dataset, keyword: str) -> str:
    value = _raw_text(dataset, keyword)
    if not value:
        raise _refuse(f"{keyword} is missing")
    if "\\" in value:
        raise _refuse(f"{keyword} has more than one value")
    try:
        return check_uid(value)
    except UnsafeUidError as exc:
        raise _refuse(f"{keyword} is not a valid UID ({len(value)} characters)") from exc


def quoted_uid(uid: str) -> str:
    """A UID for a reason: itself when valid, else only that it is invalid."""
    try:
        return check_uid(uid.strip())
    except UnsafeUidError:
        return "(not a valid UID)"


def _optional_int(dataset: Dataset, keyword: str) -> int | None:
    value = _value(dataset, keyword)
    if value in (None, "") or isinstance(value, MultiValue):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _optional_text(dataset: Dataset, keyword: str, limit: int) -> str | None:
    value = _value(dataset, keyword)
    if value in (None, "") or isinstance(value, bytes | bytearray | list):
        return None
    try:
        return str(value)[:limit] or None
    except Exception:  # noqa: BLE001 - undecodable optional attribute
        return None


def patient_key(dataset: Dataset) -> str:
    """Who the instance belongs to, as a hash: Patient ID, its issuer and the name.

    Why a hash: the database compares it to keep two patients' series apart
    and never needs to show it; normalised (case, trailing ``^`` and blanks)
    so that a PACS re-formatting the name does not split one patient.
    """
    parts = []
    for keyword in ("PatientID", "IssuerOfPatientID", "PatientName"):
        raw = _value(dataset, keyword)
        parts.append(str(raw if raw is not None else "").strip().rstrip("^ ").upper())
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:32]


def _dataset_bytes(body: bytes, transfer_syntax: UID, max_bytes: int) -> bytes:
    """The encoded dataset; a deflated one inflated, at most ``max_bytes``."""
    if transfer_syntax != DeflatedExplicitVRLittleEndian:
        if len(body) > max_bytes:
            raise _refuse("dataset larger than listener.max_instance_mb", STATUS_OUT_OF_RESOURCES)
        return body
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise _refuse("deflated dataset does not inflate") from exc
    if len(inflated) > max_bytes or inflater.unconsumed_tail:
        raise _refuse(
            "deflated dataset inflates beyond listener.max_instance_mb", STATUS_OUT_OF_RESOURCES
        )
    if not inflater.eof:
        raise _refuse("deflated dataset ends before its deflate stream does")
    return inflated


def _stop_at_pixel_data(tag: Any, _vr: str | None, _length: int) -> bool:
    return int(tag) in PIXEL_DATA_TAGS


def _is_image_storage(sop_class: str) -> bool:
    return "Image Storage" in UID(sop_class).name


def read_instance_header(
    file_bytes: bytes,
    *,
    command_sop_class_uid: str,
    command_sop_instance_uid: str,
    context_sop_class_uid: str | None = None,
    extra_keywords: tuple[str, ...] = (),
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
) -> InstanceHeader:
    """Parse a Part 10 byte stream and check it can be stored and processed.

    Args:
        file_bytes: preamble, file meta and dataset as they will be written.
        command_sop_class_uid: Affected SOP Class UID of the C-STORE request.
        command_sop_instance_uid: Affected SOP Instance UID of the request.
        context_sop_class_uid: abstract syntax of the presentation context the
            request came on (None when not received over the network).
        extra_keywords: further attributes to capture (those routing rules use).
        max_dataset_bytes: largest encoded (or inflated) dataset accepted.

    Raises:
        InvalidInstanceError: with the DIMSE failure status and the reason.
    """
    if context_sop_class_uid is not None and (
        command_sop_class_uid.strip() != context_sop_class_uid.strip()
    ):
        raise _refuse(
            f"the request's SOP class {quoted_uid(command_sop_class_uid)} is not the "
            f"presentation context's {quoted_uid(context_sop_class_uid)}",
            STATUS_SOP_CLASS_NOT_SUPPORTED,
        )
    try:
        meta_end = file_meta_end(file_bytes)
    except MalformedDatasetError as exc:
        raise _refuse(f"not a readable DICOM dataset: {exc}") from exc
    try:
        meta = dcmread(BytesIO(file_bytes[:meta_end])).file_meta
        transfer_syntax = UID(str(meta.TransferSyntaxUID))
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot understand"
        raise _refuse(f"file meta cannot be read ({type(exc).__name__})") from exc
    if not transfer_syntax.is_transfer_syntax:
        raise _refuse(f"unknown transfer syntax {quoted_uid(str(transfer_syntax))}")
    implicit = transfer_syntax.is_implicit_VR
    little = transfer_syntax.is_little_endian
    try:
        body = _dataset_bytes(file_bytes[meta_end:], transfer_syntax, max_dataset_bytes)
        layout = walk_dataset(body, implicit_vr=implicit, little_endian=little)
    except MalformedDatasetError as exc:
        raise _refuse(f"malformed dataset: {exc}") from exc
    try:
        # Values stay raw until used: converting all of them (Philips headers carry
        # ~600 private elements) would cost more than the write. Pixel Data is
        # checked from the layout, so parsing stops before it.
        dataset = read_dataset(BytesIO(body), implicit, little, stop_when=_stop_at_pixel_data)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "cannot understand"
        raise _refuse(f"dataset cannot be decoded ({type(exc).__name__})") from exc

    sop_class = _required_uid(dataset, "SOPClassUID")
    sop_instance = _required_uid(dataset, "SOPInstanceUID")
    if sop_class != command_sop_class_uid.strip():
        raise _refuse(
            f"dataset SOP Class UID {sop_class} differs from the request's "
            f"{quoted_uid(command_sop_class_uid)}",
            STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if sop_instance != command_sop_instance_uid.strip():
        raise _refuse(
            "dataset SOP Instance UID differs from the request's Affected SOP Instance UID"
        )
    study = _required_uid(dataset, "StudyInstanceUID")
    series = _required_uid(dataset, "SeriesInstanceUID")
    if layout.pixel_data is None:
        if _is_image_storage(sop_class):
            raise _refuse(
                f"no Pixel Data in a {UID(sop_class).name} instance",
                STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
    else:
        try:
            check_pixel_data(dataset, layout.pixel_data, body, transfer_syntax)
        except PixelModuleError as exc:
            raise _refuse(str(exc)) from exc

    captured = capture_attributes(dataset, CAPTURED_KEYWORDS + extra_keywords)
    return InstanceHeader(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(transfer_syntax),
        modality=_optional_text(dataset, "Modality", 16),
        series_number=_optional_int(dataset, "SeriesNumber"),
        series_description=_optional_text(dataset, "SeriesDescription", 128),
        attributes=_with_enhanced(dataset, sop_class, captured),
        patient_key=patient_key(dataset),
    )
