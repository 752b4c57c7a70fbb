"""Sequence identification: which series of a study is T1, T1c, T2 and FLAIR.

Why physics first: SeriesDescription is typed by whoever set up the protocol
and is unreliable across sites and languages. The tags that carry the physics
(TR, TE, TI, sequence type, contrast agent) decide the weighting where they
are present; description and protocol words decide only what the physics
leaves open, and words such as "pre" override a contrast word. Localizers,
derived/reformatted images, diffusion/EPI/perfusion, multi-echo and series too
small to be a volume are rejected first. Every series gets a candidate record
with its reasons, so a job can show why a series was or was not chosen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from segnode.config.settings import SelectionSettings
from segnode.pipeline.errors import SequencesMissingError
from segnode.pipeline.sequence_facts import MR_STORAGE_CLASSES, SequenceFacts
from segnode.vocabulary import Role

_DERIVED_IMAGE_TYPES = {
    "DERIVED",
    "SECONDARY",
    "MPR",
    "REFORMATTED",
    "PROJECTION IMAGE",
    "MIP",
    "SUBTRACTION",
    "SUB",
    "LOCALIZER",
    "MOSAIC",
    "ADC",
    "TRACEW",
    "FA",
}


class Evidence(StrEnum):
    """What a decision about a series rests on, strongest first (the quality checks read it)."""

    PHYSICS = "physics"
    """TR, TE, TI and the sequence type."""
    CONTRAST_TAG = "contrast_tag"
    """ContrastBolusAgent (0018,0010)."""
    WORDS = "words"
    """SeriesDescription and ProtocolName only."""
    ACQUISITION_ORDER = "acquisition_order"
    """Acquired after (or before) a series with contrast evidence."""
    NONE = "none"
    """Nothing: a default was taken (a T1 without contrast evidence is pre-contrast)."""


@dataclass(slots=True)
class Candidate:
    """One series and what identification made of it."""

    facts: SequenceFacts
    role: Role | None = None
    rejected: str | None = None
    reasons: list[str] = field(default_factory=list)
    chosen: bool = False
    identified_by: Evidence | None = None
    """What decided the weighting: the physics tags, or only the words."""
    contrast: Evidence | None = None
    """For T1-weighted series: what decided pre- or post-contrast."""

    @property
    def score(self) -> tuple[int, float, int]:
        """Preference among candidates of one role: 3D, then thin slices, then more images."""
        thickness = self.facts.slice_thickness_mm or 99.0
        return (1 if self.facts.acquisition_type == "3D" else 0, -thickness, self.facts.image_count)

    def as_record(self) -> dict[str, object]:
        return {
            "series_instance_uid": self.facts.series_instance_uid,
            "series_description": self.facts.description,
            "series_number": self.facts.series_number,
            "role": self.role.value if self.role else None,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "reasons": list(self.reasons),
            "identified_by": self.identified_by.value if self.identified_by else None,
            "contrast": self.contrast.value if self.contrast else None,
        }


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    chosen: dict[Role, Candidate]
    candidates: list[Candidate]

    @property
    def missing(self) -> list[Role]:
        return [role for role in Role if role not in self.chosen]

    def as_record(self) -> dict[str, object]:
        return {
            "roles": {
                role.value: (
                    {
                        "series_instance_uid": self.chosen[role].facts.series_instance_uid,
                        "series_description": self.chosen[role].facts.description,
                    }
                    if role in self.chosen
                    else None
                )
                for role in Role
            },
            "missing": [role.value for role in self.missing],
            "candidates": [candidate.as_record() for candidate in self.candidates],
        }


def _search(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.IGNORECASE) is not None


def rejection(facts: SequenceFacts, settings: SelectionSettings) -> str | None:
    """Why a series cannot be a structural volume, or None."""
    if facts.modality and facts.modality != "MR":
        return f"modality {facts.modality}, not MR"
    if facts.sop_class_uid and facts.sop_class_uid not in MR_STORAGE_CLASSES:
        return f"SOP class {facts.sop_class_uid} is not MR image storage"
    derived = _DERIVED_IMAGE_TYPES.intersection(facts.image_type)
    if derived:
        return f"ImageType {'/'.join(facts.image_type)}: derived, reformatted or localizer"
    if _search(settings.exclude_pattern, facts.text):
        return f"description {facts.text!r} names a localizer, reformat or subtraction"
    if "EP" in facts.scanning_sequence or facts.has_diffusion:
        return "echo-planar / diffusion acquisition (ScanningSequence EP or diffusion tags)"
    if _search(settings.functional_pattern, facts.text):
        return f"description {facts.text!r} names a diffusion, perfusion or functional series"
    if facts.echo_count > 1:
        return f"multi-echo series ({facts.echo_count} echoes)"
    if facts.image_count < settings.min_images:
        return f"only {facts.image_count} images (< {settings.min_images}): not a volume"
    return None


def weighting(facts: SequenceFacts, settings: SelectionSettings) -> tuple[str | None, str]:
    """'t1', 't2', 'flair' or None, with the reason; physics first, then words."""
    decided = physics_weighting(facts)
    if decided is not None:
        return decided
    return word_weighting(facts, settings)


def physics_weighting(facts: SequenceFacts) -> tuple[str | None, str] | None:
    """The weighting the physics tags decide (None when they leave it open)."""
    tr, te, ti = facts.repetition_time_ms, facts.echo_time_ms, facts.inversion_time_ms
    inversion = "IR" in facts.scanning_sequence or (ti is not None and ti > 0)
    if inversion and ti is not None and ti >= 1500 and (te is None or te >= 60):
        return (
            "flair",
            f"inversion recovery with TI {ti:g} ms and TE {te or 0:g} ms (fluid-attenuated)",
        )
    if inversion and ti is not None and 300 <= ti < 1500 and (te is None or te < 20):
        return "t1", f"inversion-prepared with TI {ti:g} ms and short TE (MPRAGE-like T1)"
    if tr is not None and te is not None:
        if tr >= 1800 and te >= 60 and not inversion:
            return "t2", f"long TR {tr:g} ms and long TE {te:g} ms (T2-weighted)"
        if tr < 1000 and te < 30:
            return "t1", f"short TR {tr:g} ms and short TE {te:g} ms (T1-weighted)"
        if tr >= 1800 and te < 30 and not inversion:
            return (
                None,
                f"long TR {tr:g} ms and short TE {te:g} ms: proton density, not a BraTS input",
            )
    return None


def word_weighting(facts: SequenceFacts, settings: SelectionSettings) -> tuple[str | None, str]:
    """The weighting the description and protocol words name, when the physics cannot tell."""
    for role in ("flair", "t2", "t1"):
        pattern = settings.role_patterns.get(role)
        if pattern and _search(pattern, facts.text):
            return (
                role,
                f"description {facts.text!r} matches the {role} pattern (physics tags inconclusive)",
            )
    return None, "neither the physics tags nor the description identify T1, T2 or FLAIR"


def contrast_evidence(facts: SequenceFacts, settings: SelectionSettings) -> tuple[bool | None, str]:
    """True post-contrast, False pre-contrast, None unknown; with the reason."""
    if _search(settings.pre_contrast_pattern, facts.text):
        return False, f"description {facts.text!r} says pre-contrast"
    if facts.contrast_agent:
        return True, f"ContrastBolusAgent {facts.contrast_agent!r}"
    if _search(settings.contrast_pattern, facts.text):
        return True, f"description {facts.text!r} names contrast"
    return None, "no contrast agent tag and no contrast words"


def _acquisition_key(candidate: Candidate) -> tuple[str, int]:
    return (candidate.facts.series_time or "", candidate.facts.series_number or 0)


def _split_t1(t1s: list[Candidate], settings: SelectionSettings) -> None:
    """Assign T1 or T1c to every T1-weighted candidate."""
    unknown = []
    for candidate in t1s:
        post, reason = contrast_evidence(candidate.facts, settings)
        candidate.reasons.append(reason)
        if post is None:
            unknown.append(candidate)
        else:
            candidate.role = Role.T1C if post else Role.T1
            candidate.contrast = (
                Evidence.CONTRAST_TAG if post and candidate.facts.contrast_agent else Evidence.WORDS
            )
    if not unknown:
        return
    known_post = [c for c in t1s if c.role is Role.T1C]
    if known_post:
        first_post = min(_acquisition_key(c) for c in known_post)
        for candidate in unknown:
            before = _acquisition_key(candidate) < first_post
            candidate.role = Role.T1 if before else Role.T1C
            candidate.contrast = Evidence.ACQUISITION_ORDER
            candidate.reasons.append(
                f"acquired {'before' if before else 'after'} the first post-contrast series"
            )
    else:
        # No series shows contrast: never guess a T1c from acquisition order
        # alone (a study with two pre-contrast T1s would be mislabelled).
        for candidate in unknown:
            candidate.role = Role.T1
            candidate.contrast = Evidence.NONE
            candidate.reasons.append(
                "no series of the study shows contrast evidence: taken as pre-contrast"
            )


def identify_sequences(
    series: Sequence[SequenceFacts], settings: SelectionSettings
) -> RoleAssignment:
    """Assign T1, T1c, T2 and FLAIR among a study's series, recording every decision."""
    candidates = [Candidate(facts) for facts in series]
    t1_weighted = []
    for candidate in candidates:
        reason = rejection(candidate.facts, settings)
        if reason is not None:
            candidate.rejected = reason
            continue
        decided = physics_weighting(candidate.facts)
        candidate.identified_by = Evidence.PHYSICS if decided is not None else Evidence.WORDS
        kind, why = decided if decided is not None else word_weighting(candidate.facts, settings)
        candidate.reasons.append(why)
        if kind is None:
            candidate.rejected = why
        elif kind == "t1":
            t1_weighted.append(candidate)
        else:
            candidate.role = Role(kind)
    _split_t1(t1_weighted, settings)

    chosen: dict[Role, Candidate] = {}
    for role in Role:
        options = [c for c in candidates if c.role is role and c.rejected is None]
        if not options:
            continue
        best = max(options, key=lambda c: (c.score, _acquisition_key(c)))
        best.chosen = True
        best.reasons.append(
            f"chosen as {role.value} among {len(options)} candidate(s): 3D, thinnest, most images"
        )
        for other in options:
            if other is not best:
                other.reasons.append(
                    f"not chosen: {best.facts.series_instance_uid} is preferred for {role.value}"
                )
        chosen[role] = best
    return RoleAssignment(chosen, candidates)


def stand_ins(assignment: RoleAssignment, substitutes: Mapping[Role, Role]) -> dict[Role, Role]:
    """Each missing role that a present one may stand in for -> that role (``[selection] substitutes``)."""
    return {
        missing: substitutes[missing]
        for missing in assignment.missing
        if missing in substitutes and substitutes[missing] in assignment.chosen
    }


def require_roles(assignment: RoleAssignment, required: Iterable[Role] = Role) -> None:
    """Raise :class:`SequencesMissingError` naming what is missing and what was found."""
    missing = [role for role in required if role not in assignment.chosen]
    if not missing:
        return
    series = tuple(
        {
            "series_instance_uid": c.facts.series_instance_uid,
            "description": c.facts.description or "",
            "taken_as": (
                c.role.value
                if c.role and not c.rejected
                else f"rejected ({c.rejected})"
                if c.rejected
                else "unidentified"
            ),
        }
        for c in assignment.candidates
    )
    found = "; ".join(
        f"{s['description'] or s['series_instance_uid']}: {s['taken_as']}" for s in series
    )
    raise SequencesMissingError(
        f"missing {', '.join(role.value.upper() for role in missing)}; "
        f"the study has {len(assignment.candidates)} series: {found or 'none'}",
        missing=tuple(role.value for role in missing),
        series=series,
    )
