"""The acquisition facts of a series that sequence identification reasons with.

Why a separate, flat record: classic MR headers carry TR/TE/TI and the
sequence type at the top level, Enhanced MR carries them in functional-group
sequences under other names (EchoPulseSequence, InversionRecovery,
MRTimingAndRelatedParametersSequence). Identification should not care which;
this module reads both into one :class:`SequenceFacts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
MR_STORAGE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.4", ENHANCED_MR_STORAGE})


@dataclass(frozen=True, slots=True)
class SequenceFacts:
    """What a series is, as far as the header says (None: not stated)."""

    series_instance_uid: str
    description: str
    protocol: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    scanning_sequence: frozenset[str]
    """SE, GR, IR, EP, RM (classic); for Enhanced MR derived from EchoPulseSequence/InversionRecovery."""
    sequence_variant: frozenset[str]
    acquisition_type: str | None
    repetition_time_ms: float | None
    echo_time_ms: float | None
    inversion_time_ms: float | None
    contrast_agent: str | None
    series_number: int | None
    series_time: str | None
    slice_thickness_mm: float | None
    image_count: int
    """Images in the series: instances, or frames for multi-frame."""
    echo_count: int
    has_diffusion: bool

    @property
    def text(self) -> str:
        """Description and protocol, for the pattern rules."""
        return f"{self.description} {self.protocol}".strip()


def _strings(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, list | tuple | MultiValue):
        return tuple(str(item).strip().upper() for item in value if str(item).strip())
    return tuple(part.strip().upper() for part in str(value).split("\\") if part.strip())


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _first(dataset: Dataset, *path: str) -> Any:
    """Walk nested sequences, taking the first item of each."""
    current: Any = dataset
    for keyword in path:
        current = current.get(keyword) if current is not None else None
        if current is None:
            return None
        if (
            hasattr(current, "__len__")
            and not isinstance(current, str | bytes)
            and keyword.endswith("Sequence")
        ):
            current = current[0] if len(current) else None
    return current


def enhanced_attributes(dataset: Dataset) -> dict[str, Any]:
    """Classic-named attributes for an Enhanced MR dataset (functional groups flattened)."""
    shared = ("SharedFunctionalGroupsSequence",)
    per_frame = ("PerFrameFunctionalGroupsSequence",)
    flattened: dict[str, Any] = {}
    echo_pulse = str(dataset.get("EchoPulseSequence") or "").upper()
    scanning = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}.get(echo_pulse, [])
    if (
        str(
            dataset.get("InversionRecovery")
            or _first(dataset, *shared, "MRModifierSequence", "InversionRecovery")
            or ""
        ).upper()
        == "YES"
    ):
        scanning.append("IR")
    if str(dataset.get("EchoPlanarPulseSequence") or "").upper() == "YES":
        scanning.append("EP")
    if scanning:
        flattened["ScanningSequence"] = scanning
    for keyword, path in {
        "RepetitionTime": ("MRTimingAndRelatedParametersSequence", "RepetitionTime"),
        "FlipAngle": ("MRTimingAndRelatedParametersSequence", "FlipAngle"),
        "EchoTime": ("MREchoSequence", "EffectiveEchoTime"),
        "InversionTime": ("MRModifierSequence", "InversionTimes"),
        "SliceThickness": ("PixelMeasuresSequence", "SliceThickness"),
    }.items():
        value = _first(dataset, *shared, *path)
        if value is None:
            value = _first(dataset, *per_frame, *path)
        if value is not None:
            flattened[keyword] = str(value[0]) if isinstance(value, MultiValue) else str(value)
    b_value = _first(dataset, *shared, "MRDiffusionSequence", "DiffusionBValue")
    if b_value is None:
        b_value = _first(dataset, *per_frame, "MRDiffusionSequence", "DiffusionBValue")
    if b_value is not None:
        flattened["DiffusionBValue"] = str(b_value)
    return flattened


def facts_from_attributes(
    series_instance_uid: str, attributes: Mapping[str, Any], image_count: int, echo_count: int = 1
) -> SequenceFacts:
    """Build facts from captured header attributes (keyword -> str or list of str)."""
    series_number = _number(attributes.get("SeriesNumber"))
    agent = str(attributes.get("ContrastBolusAgent") or "").strip() or None
    return SequenceFacts(
        series_instance_uid=series_instance_uid,
        description=str(attributes.get("SeriesDescription") or ""),
        protocol=str(attributes.get("ProtocolName") or ""),
        modality=str(attributes.get("Modality") or ""),
        sop_class_uid=str(attributes.get("SOPClassUID") or ""),
        image_type=_strings(attributes.get("ImageType")),
        scanning_sequence=frozenset(_strings(attributes.get("ScanningSequence"))),
        sequence_variant=frozenset(_strings(attributes.get("SequenceVariant"))),
        acquisition_type=(str(attributes.get("MRAcquisitionType") or "").upper() or None),
        repetition_time_ms=_number(attributes.get("RepetitionTime")),
        echo_time_ms=_number(attributes.get("EchoTime")),
        inversion_time_ms=_number(attributes.get("InversionTime")),
        contrast_agent=agent,
        series_number=int(series_number) if series_number is not None else None,
        series_time=str(attributes.get("SeriesTime") or attributes.get("AcquisitionTime") or "")
        or None,
        slice_thickness_mm=_number(attributes.get("SliceThickness")),
        image_count=image_count,
        echo_count=echo_count,
        # Philips writes DiffusionBValue 0 into ordinary series: only b > 0 is diffusion.
        has_diffusion=(_number(attributes.get("DiffusionBValue")) or 0.0) > 0,
    )


FACT_KEYWORDS = (
    "SeriesDescription",
    "ProtocolName",
    "Modality",
    "SOPClassUID",
    "ImageType",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "ContrastBolusAgent",
    "SeriesNumber",
    "SeriesTime",
    "AcquisitionTime",
    "SliceThickness",
    "DiffusionBValue",
)


def _attribute_value(value: Any) -> Any:
    if isinstance(value, MultiValue):
        return [str(item) for item in value]
    return str(value)


def facts_from_datasets(datasets: Sequence[Dataset]) -> SequenceFacts:
    """Facts of one series from its instances' headers (pixel data not needed)."""
    if not datasets:
        raise ValueError("a series needs at least one instance")
    first = datasets[0]
    attributes: dict[str, Any] = {
        keyword: _attribute_value(first.get(keyword))
        for keyword in FACT_KEYWORDS
        if first.get(keyword) not in (None, "")
    }
    if str(first.get("SOPClassUID", "")) == ENHANCED_MR_STORAGE:
        attributes = {**enhanced_attributes(first), **attributes}
    images = sum(int(ds.get("NumberOfFrames") or 1) for ds in datasets)
    echoes = {str(ds.get("EchoNumbers") or "1") for ds in datasets}
    return facts_from_attributes(str(first.SeriesInstanceUID), attributes, images, len(echoes))
