"""The quality report of one job: the checks that ran, what they measured, the flags raised.

Why a report at all: a segmentation can be confidently wrong when its input is not what the
model was trained on (thick slices, a partial field of view, no brain, no contrast), when the
series were not where the scanner said (patient motion between series, so an overlay drawn on
FLAIR by patient coordinates lies beside the lesion), when a sequence was missing and another
stood in for it, or when the test-time-augmentation passes disagree. None of that shows in the
masks themselves. The report goes wherever the reader looks: the SR (coded qualitative
evaluations), the PDF, the secondary-capture band and the job record; "review recommended"
is raised when any flag is.

Every text here reaches a reader; none carries PHI (series are named by role, never by
description or UID).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from segnode.vocabulary import Region, Role


class QaCheck(StrEnum):
    """One kind of quality check; the value is the flag's code in the SR and the job record."""

    MOTION = "motion"
    """Registration moved a series against the T1c by more than the configured limit."""
    MISSING_SEQUENCE = "missing_sequence"
    """A required sequence was absent and another series stood in for it."""
    WEAK_IDENTIFICATION = "weak_identification"
    """A sequence was identified only from indirect evidence (acquisition order, words)."""
    SLICE_THICKNESS = "slice_thickness"
    """A series' slices are thicker (further apart) than the training data's."""
    FIELD_OF_VIEW = "field_of_view"
    """A series does not cover a whole head, or covers far more than one."""
    NOT_A_BRAIN = "not_a_brain"
    """Brain extraction found a volume outside the range of adult brains."""
    CONTRAST_MISSING = "contrast_missing"
    """Nothing in the headers shows that the T1c was acquired after contrast."""
    TTA_DISAGREEMENT = "tta_disagreement"
    """The test-time-augmentation passes disagree on the tumour's extent."""


#: How each check is named to a reader (PDF, SC band, SR code meaning).
CHECK_TITLES: dict[QaCheck, str] = {
    QaCheck.MOTION: "Inter-series motion",
    QaCheck.MISSING_SEQUENCE: "Missing sequence",
    QaCheck.WEAK_IDENTIFICATION: "Sequence identified on weak evidence",
    QaCheck.SLICE_THICKNESS: "Slice thickness outside training data",
    QaCheck.FIELD_OF_VIEW: "Field of view outside training data",
    QaCheck.NOT_A_BRAIN: "Input may not be a brain",
    QaCheck.CONTRAST_MISSING: "Contrast not documented",
    QaCheck.TTA_DISAGREEMENT: "Augmentation passes disagree",
}


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QaFlag(_Record):
    """One raised flag: which check, on which series, in one sentence a radiologist reads."""

    check: QaCheck
    summary: str
    """E.g. "FLAIR is 16.2 mm / 3.1° from the T1c (limit 2.0 mm / 2.0°)"; no PHI."""
    role: Role | None = None
    """The series it concerns, when it concerns one."""

    @property
    def title(self) -> str:
        return CHECK_TITLES[self.check]


class SeriesMotion(_Record):
    """The rigid registration of one series onto the T1c, as a reader's two numbers."""

    translation_mm: float
    """Displacement at the centre of rotation (the brain's centre of mass)."""
    rotation_deg: float
    """The rotation's angle about its axis."""


class TtaAgreement(_Record):
    """How far the test-time-augmentation passes agree, per network output region."""

    passes: int
    volume_ml: dict[Region, tuple[float, float]]
    """(smallest, largest) volume any single pass gives a region (each pass at 0.5)."""
    disagreement: dict[Region, float]
    """Among voxels that any pass puts in the region, the share not all passes agree on."""
    mean_std: dict[Region, float]
    """Mean voxel-wise standard deviation of the passes' probabilities over those voxels."""


class QualityReport(_Record):
    """Everything the quality checks found for one job (``quality.json`` in its folder)."""

    flags: tuple[QaFlag, ...] = ()
    checked: tuple[QaCheck, ...] = ()
    """The checks that ran (a check without its inputs, e.g. TTA off, is not listed)."""
    motion: dict[Role, SeriesMotion] = Field(default_factory=dict)
    substitutes: dict[Role, Role] = Field(default_factory=dict)
    """Missing role -> the role whose series stood in for it."""
    tta: TtaAgreement | None = None
    measured: dict[str, float] = Field(default_factory=dict)
    """Other figures the checks compared with their limits (brain volume, thickness, extent)."""

    @property
    def review_recommended(self) -> bool:
        return bool(self.flags)

    @property
    def headline(self) -> str:
        """The one line a reader sees first."""
        if self.flags:
            count = len(self.flags)
            return f"REVIEW RECOMMENDED: {count} quality flag{'s' if count != 1 else ''}"
        checks = len(self.checked)
        return f"No quality flag raised ({checks} check{'s' if checks != 1 else ''})"

    def lines(self) -> list[str]:
        """The headline, then one line per flag: "<title>: <summary>"."""
        return [self.headline, *(f"{flag.title}: {flag.summary}" for flag in self.flags)]
