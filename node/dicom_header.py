"""Reading and checking the header of a received instance.

Why parse in the C-STORE handler at all: grouping needs the Study and Series
Instance UIDs, which are only in the dataset, and an instance the pipeline
could not read later must be refused now, while the sender is still there to
hear it. So the handler parses the encoded bytes once (no pixel decoding) and
checks what later steps rely on: the UIDs, the SOP class, and that native pixel
data is as long as its header says.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from node.errors import InvalidInstanceError
from pipeline.sequence_facts import ENHANCED_MR_STORAGE, enhanced_attributes
from storage.errors import UnsafeUidError
from storage.filestore import check_uid

STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900

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


def _json_value(value: Any) -> Any:
    if isinstance(value, MultiValue):
        return [str(item) for item in value]
    if isinstance(value, bytes | bytearray) or isinstance(value, list):
        return None
    return str(value)


def capture_attributes(dataset: Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    """The given keywords' values as JSON-friendly strings (lists when multi-valued)."""
    captured: dict[str, Any] = {}
    for keyword in keywords:
        element = dataset.get(keyword)
        if element is None or element == "":
            continue
        value = _json_value(element)
        if value is not None:
            captured[keyword] = value
    return captured


def _with_enhanced(dataset: Dataset, captured: dict[str, Any]) -> dict[str, Any]:
    """Enhanced MR keeps TR/TE/TI in functional groups: capture them under the classic names."""
    if str(dataset.get("SOPClassUID", "")) != ENHANCED_MR_STORAGE:
        return captured
    return {**enhanced_attributes(dataset), **captured}


def _required_uid(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if not value:
        raise InvalidInstanceError(STATUS_CANNOT_UNDERSTAND, f"{keyword} is missing")
    try:
        return check_uid(str(value).strip())
    except UnsafeUidError as exc:
        raise InvalidInstanceError(STATUS_CANNOT_UNDERSTAND, f"{keyword}: {exc}") from exc


def _check_pixel_length(dataset: Dataset, transfer_syntax: UID) -> None:
    if "PixelData" not in dataset or transfer_syntax.is_encapsulated:
        return
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
        expected = (
            int(dataset.Rows)
            * int(dataset.Columns)
            * int(dataset.get("SamplesPerPixel", 1))
            * frames
            * int(dataset.BitsAllocated)
            + 7
        ) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInstanceError(
            STATUS_CANNOT_UNDERSTAND, f"image pixel module incomplete: {exc}"
        ) from exc
    actual = len(dataset.PixelData)
    if actual < expected:
        raise InvalidInstanceError(
            STATUS_CANNOT_UNDERSTAND,
            f"pixel data truncated: {actual} bytes, the header implies {expected}",
        )


def read_instance_header(
    file_bytes: bytes,
    *,
    command_sop_class_uid: str,
    command_sop_instance_uid: str,
    extra_keywords: tuple[str, ...] = (),
) -> InstanceHeader:
    """Parse a Part 10 byte stream and check it can be stored and processed.

    Args:
        file_bytes: preamble, file meta and dataset as they will be written.
        command_sop_class_uid: Affected SOP Class UID of the C-STORE request.
        command_sop_instance_uid: Affected SOP Instance UID of the request.
        extra_keywords: further attributes to capture (those routing rules use).

    Raises:
        InvalidInstanceError: with the DIMSE failure status and the reason.
    """
    try:
        # Element values stay raw until used: converting all of them (Philips
        # headers carry ~600 private elements) would cost more than the write.
        dataset = dcmread(BytesIO(file_bytes))
    except Exception as exc:  # noqa: BLE001 - any parse failure means "cannot understand"
        raise InvalidInstanceError(
            STATUS_CANNOT_UNDERSTAND, f"not a readable DICOM dataset: {type(exc).__name__}: {exc}"
        ) from exc

    sop_class = _required_uid(dataset, "SOPClassUID")
    sop_instance = _required_uid(dataset, "SOPInstanceUID")
    if sop_class != command_sop_class_uid.strip():
        raise InvalidInstanceError(
            STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class UID {sop_class} differs from the request's {command_sop_class_uid}",
        )
    if sop_instance != command_sop_instance_uid.strip():
        raise InvalidInstanceError(
            STATUS_CANNOT_UNDERSTAND,
            "dataset SOP Instance UID differs from the request's Affected SOP Instance UID",
        )
    study = _required_uid(dataset, "StudyInstanceUID")
    series = _required_uid(dataset, "SeriesInstanceUID")
    transfer_syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
    _check_pixel_length(dataset, transfer_syntax)

    series_number = dataset.get("SeriesNumber")
    description = dataset.get("SeriesDescription")
    return InstanceHeader(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(transfer_syntax),
        modality=str(dataset.get("Modality") or "") or None,
        series_number=int(series_number) if series_number not in (None, "") else None,
        series_description=str(description)[:128] if description else None,
        attributes=_with_enhanced(
            dataset, capture_attributes(dataset, CAPTURED_KEYWORDS + extra_keywords)
        ),
    )
