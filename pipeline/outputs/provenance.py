"""Who made a result object and where it is filed: algorithm, model weights, series.

Why frozen specs checked on construction: the SEG's Algorithm Identification,
the SR's device observer and the PDF all print these fields; a value DICOM cannot
carry (an over-long LO, a checksum that is not one) must fail when the job builds
its provenance, not half-way through writing the objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.uid import generate_uid

from segnode import __version__
from segnode.config.settings import ResultSeriesSettings
from segnode.pipeline.outputs.errors import OutputSpecError
from segnode.pipeline.workspace import InferenceRecord
from segnode.vocabulary import OutputKind

#: Longest value of a DICOM LO (Long String) element.
LO_MAX_CHARS = 64
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Hex digits of the checksum shown in short labels; the full one is in the parameters.
SHORT_SHA_CHARS = 12
#: Longest model id accepted (it is written into text values, not into an LO).
MODEL_ID_MAX_CHARS = 1024
#: Largest value of a DICOM IS (Integer String), e.g. Series Number.
IS_MAX = 2**31 - 1
#: What every result series description ends with (the issue's wording).
NOT_FOR_CLINICAL_USE_SUFFIX = " - not for clinical use"
#: Shown in the viewer's series list, so a radiologist tells the four result series apart.
KIND_LABELS: dict[OutputKind, str] = {"seg": "SEG", "sr": "SR", "sc": "SC", "pdf": "PDF"}


def series_description(settings: ResultSeriesSettings, kind: OutputKind) -> str:
    """E.g. "segnode tumour SEG - not for clinical use" (at most 63 characters: LO is 64)."""
    return f"{settings.series_description} {KIND_LABELS[kind]}{NOT_FOR_CLINICAL_USE_SUFFIX}"


def _check_lo(what: str, value: str) -> None:
    if not value.strip():
        raise OutputSpecError(f"{what} is empty")
    if len(value) > LO_MAX_CHARS or "\\" in value or any(ord(c) < 32 for c in value):
        raise OutputSpecError(
            f"{what} {value!r} is not a DICOM LO value "
            f"(at most {LO_MAX_CHARS} characters, no backslash or control characters)"
        )


@dataclass(frozen=True, slots=True)
class AlgorithmProvenance:
    """The segmenting algorithm (segnode) and the model whose weights it ran.

    Attributes:
        algorithm_name: Algorithm Name (0066,0036), e.g. "segnode".
        algorithm_version: segnode's version string.
        model_id: the registry id of the model, e.g. "segnode-reference-v1".
        model_version: the model's own version string.
        model_sha256: SHA-256 of the weights file, 64 lowercase hex digits.
        intended_use: the statement every object repeats.
    """

    algorithm_name: str
    algorithm_version: str
    model_id: str
    model_version: str
    model_sha256: str
    intended_use: str = "NOT FOR CLINICAL USE"

    def __post_init__(self) -> None:
        for name in ("algorithm_name", "algorithm_version", "model_version", "intended_use"):
            _check_lo(f"algorithm provenance: {name}", getattr(self, name))
        # The model id goes into text values only (an ensemble's ids joined can be
        # long); it is left out of the LO version label when it does not fit.
        if (
            not self.model_id.strip()
            or len(self.model_id) > MODEL_ID_MAX_CHARS
            or any(ord(c) < 32 for c in self.model_id)
        ):
            raise OutputSpecError(
                f"algorithm provenance: model_id {self.model_id[:80]!r} is empty, longer than "
                f"{MODEL_ID_MAX_CHARS} characters or holds control characters"
            )
        if not _SHA256.fullmatch(self.model_sha256):
            raise OutputSpecError(
                f"algorithm provenance: model_sha256 of {self.model_id!r} is not 64 lowercase "
                "hex digits; pass the checksum the model registry verified"
            )
        if len(self._version_labels()[-1]) > LO_MAX_CHARS:
            raise OutputSpecError(
                f"algorithm provenance: algorithm version {self.algorithm_version!r} leaves no "
                f"room for the model checksum in Algorithm Version ({LO_MAX_CHARS} characters)"
            )

    def _version_labels(self) -> tuple[str, ...]:
        checksum = f"@{self.model_sha256[:SHORT_SHA_CHARS]}"
        return (
            f"{self.algorithm_version} / {self.model_id} {self.model_version}{checksum}",
            f"{self.algorithm_version} / {self.model_version}{checksum}",
            f"{self.algorithm_version} / model{checksum}",
        )

    @property
    def version_label(self) -> str:
        """Algorithm Version (0066,0031, LO): segnode's version and which weights it ran.

        The longest of "version / model-id model-version@sha" and shorter forms
        that fits 64 characters; the checksum prefix is always there, and the
        full model identity is in ``parameters``.
        """
        return next(label for label in self._version_labels() if len(label) <= LO_MAX_CHARS)

    @property
    def model_label(self) -> str:
        """The model as a person reads it: id, version and short checksum."""
        return (
            f"{self.model_id} {self.model_version} (sha256 {self.model_sha256[:SHORT_SHA_CHARS]})"
        )

    @property
    def parameters(self) -> dict[str, str]:
        """The full model identity, for Algorithm Parameters (0066,0032) and TID 4019."""
        return {
            "model_id": self.model_id,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
        }

    @property
    def device_uid(self) -> str:
        """Device Observer UID: one per algorithm version and model, stable across jobs."""
        return str(
            generate_uid(
                entropy_srcs=[self.algorithm_name, self.algorithm_version, self.model_sha256]
            )
        )

    def as_record(self) -> dict[str, str]:
        """The provenance for the job's record."""
        return {
            "algorithm_name": self.algorithm_name,
            "algorithm_version": self.algorithm_version,
            **self.parameters,
            "intended_use": self.intended_use,
        }


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """The series a result object is filed under, in the source study."""

    series_number: int
    series_description: str
    manufacturer: str

    def __post_init__(self) -> None:
        if not 1 <= self.series_number <= IS_MAX:
            raise OutputSpecError(f"series number {self.series_number} not in 1..{IS_MAX}")
        _check_lo("series description", self.series_description)
        _check_lo("manufacturer", self.manufacturer)
        if not self.series_description.endswith(NOT_FOR_CLINICAL_USE_SUFFIX):
            raise OutputSpecError(
                f"series description {self.series_description!r} must end with "
                f"{NOT_FOR_CLINICAL_USE_SUFFIX!r}: these are research results"
            )

    @classmethod
    def for_kind(cls, settings: ResultSeriesSettings, kind: OutputKind) -> SeriesSpec:
        """The configured series number and description of one output (``[result_series]``)."""
        numbers: dict[OutputKind, int] = {
            "seg": settings.seg_series_number,
            "sr": settings.sr_series_number,
            "sc": settings.sc_series_number,
            "pdf": settings.pdf_series_number,
        }
        return cls(
            series_number=numbers[kind],
            series_description=series_description(settings, kind),
            manufacturer=settings.manufacturer,
        )


#: The algorithm name every result object names (SR, SEG, SoftwareVersions).
ALGORITHM_NAME = "segnode"


def provenance_from(inference: InferenceRecord) -> AlgorithmProvenance:
    """The algorithm and model(s) that made the labels, from the infer step's record."""
    return AlgorithmProvenance(
        algorithm_name=ALGORITHM_NAME,
        algorithm_version=__version__,
        model_id=inference.ensemble_id,
        model_version=inference.primary_model.version,
        model_sha256=inference.primary_model.sha256,
    )
