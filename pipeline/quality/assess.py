"""The quality checks: from the job folder's records to a :class:`QualityReport`.

Why here, in one function run by the write step: every check reads what an earlier step
recorded (the selection's evidence, the converted volumes' geometry, the registrations, the
brain volume, the TTA passes' agreement), so one place sees them all and the report is
complete before any result object is built. Each check is a small function of plain
figures, tested on its own; ``assess`` only gathers the figures.

What each check measures and why a reader cares:

- motion: the registration of T1, T2, FLAIR onto the T1c (translation at the centre of
  rotation, the brain's centre of mass, and the rotation angle). The model saw the series
  aligned; a viewer that draws the T1c's SEG on another series by patient coordinates does
  not, so above the limit that overlay lies beside the lesion.
- missing sequence: a role that another series stood in for (``[selection] substitutes``).
- weak identification: a role decided by words only (the physics tags were inconclusive),
  or a T1c told from the T1 by acquisition order.
- contrast missing: the T1c has neither ContrastBolusAgent nor contrast words; enhancing
  tumour is defined by contrast.
- slice thickness, field of view: the series' geometry against the training data's.
- not a brain: brain extraction's volume outside the range of adult brains.
- TTA disagreement: the passes' single-pass volumes spread, and the share of voxels not all
  passes agree on (``segnode.pipeline.model.agreement``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import SimpleITK as sitk

from segnode.config.quality import QualitySettings
from segnode.pipeline.quality.record import (
    QaCheck,
    QaFlag,
    QualityReport,
    SeriesMotion,
    TtaAgreement,
)
from segnode.pipeline.registration import rotation_angle_deg
from segnode.pipeline.workspace import JsonObject, Selection, Workspace
from segnode.vocabulary import Role

#: What a motion flag tells the reader to expect (replaced when the series got its own SEG).
OVERLAY_OFF = "the T1c's overlay is off on it"

#: Who is named in a flag's sentence.
ROLE_NAMES: dict[Role, str] = {Role.T1: "T1", Role.T1C: "T1c", Role.T2: "T2", Role.FLAIR: "FLAIR"}


def series_motion(preprocessing_record: Mapping[str, object]) -> dict[Role, SeriesMotion]:
    """Each registered series' motion against the T1c, from the preprocessing record.

    ITK's Euler3D transform is ``R (x - c) + c + t``: at its centre ``c`` (set to the brain's
    centre of mass by the moments initialiser) the displacement is ``t``, and the rotation is
    one angle about one axis (``rotation_angle_deg``).
    """
    registrations = preprocessing_record.get("registration")
    motions: dict[Role, SeriesMotion] = {}
    if not isinstance(registrations, Mapping):
        return motions
    for role_name, result in registrations.items():
        transform = result.get("transform") if isinstance(result, Mapping) else None
        parameters = transform.get("parameters") if isinstance(transform, Mapping) else None
        if not isinstance(parameters, list) or len(parameters) != 6:
            continue
        angles = tuple(float(value) for value in parameters[:3])
        translation = [float(value) for value in parameters[3:]]
        motions[Role(role_name)] = SeriesMotion(
            translation_mm=math.sqrt(sum(value * value for value in translation)),
            rotation_deg=rotation_angle_deg(angles),
        )
    return motions


def motion_flags(motion: Mapping[Role, SeriesMotion], limits: QualitySettings) -> list[QaFlag]:
    flags = []
    for role, moved in motion.items():
        if (
            moved.translation_mm > limits.max_motion_mm
            or moved.rotation_deg > limits.max_rotation_deg
        ):
            flags.append(
                QaFlag(
                    check=QaCheck.MOTION,
                    role=role,
                    summary=(
                        f"{ROLE_NAMES[role]} is {moved.translation_mm:.1f} mm / "
                        f"{moved.rotation_deg:.1f}° from the T1c (limit {limits.max_motion_mm:g} mm / "
                        f"{limits.max_rotation_deg:g}°); {OVERLAY_OFF}"
                    ),
                )
            )
    return flags


def note_own_segmentations(report: QualityReport, roles: Collection[Role]) -> QualityReport:
    """The motion flags of series that got a SEG in their own geometry say so (and which).

    Why: "the overlay from the T1c is off on the FLAIR" alone sends the reader hunting; the
    write step decides which moved series get their own SEG only after the checks ran.
    """
    flags = []
    for flag in report.flags:
        if flag.check is QaCheck.MOTION and flag.role is not None and flag.role in roles:
            own = f"use the SEG on the {ROLE_NAMES[flag.role]} itself"
            flag = flag.model_copy(update={"summary": flag.summary.replace(OVERLAY_OFF, own)})
        flags.append(flag)
    return report.model_copy(update={"flags": tuple(flags)})


def _chosen_candidate(selection: Selection, role: Role) -> Mapping[str, object] | None:
    uid = selection.roles[role].series_instance_uid if role in selection.roles else None
    candidates = selection.record.get("candidates")
    if uid is None or not isinstance(candidates, list):
        return None
    for candidate in candidates:
        if isinstance(candidate, Mapping) and candidate.get("series_instance_uid") == uid:
            return candidate
    return None


def selection_flags(selection: Selection) -> list[QaFlag]:
    """Missing sequences that were stood in for, weak identifications, undocumented contrast."""
    flags = [
        QaFlag(
            check=QaCheck.MISSING_SEQUENCE,
            role=missing,
            summary=(
                f"no {ROLE_NAMES[missing]} series in the study; the {ROLE_NAMES[stand_in]} "
                f"stood in for it"
            ),
        )
        for missing, stand_in in selection.substitutes.items()
    ]
    for role in Role:
        if role in selection.substitutes:
            continue
        candidate = _chosen_candidate(selection, role)
        if candidate is None:
            continue
        if candidate.get("identified_by") == "words":
            flags.append(
                QaFlag(
                    check=QaCheck.WEAK_IDENTIFICATION,
                    role=role,
                    summary=(
                        f"the {ROLE_NAMES[role]} was recognised from its description only "
                        "(no conclusive TR/TE/TI)"
                    ),
                )
            )
        if role is Role.T1C and candidate.get("contrast") == "acquisition_order":
            flags.append(
                QaFlag(
                    check=QaCheck.CONTRAST_MISSING,
                    role=role,
                    summary=(
                        "the T1c has no contrast agent tag and no contrast words; it was taken as "
                        "post-contrast from its acquisition order"
                    ),
                )
            )
    return flags


def geometry_flags(
    geometry: Mapping[Role, tuple[tuple[float, ...], tuple[int, ...]]], limits: QualitySettings
) -> tuple[list[QaFlag], dict[str, float]]:
    """Slice spacing and extent of each series ((spacing, size) of its converted volume)."""
    flags: list[QaFlag] = []
    measured: dict[str, float] = {}
    for role, (spacing, size) in geometry.items():
        thickest = max(spacing)
        extents = [s * n for s, n in zip(spacing, size, strict=True)]
        measured[f"{role.value}_slice_spacing_mm"] = round(thickest, 2)
        measured[f"{role.value}_min_extent_mm"] = round(min(extents), 1)
        measured[f"{role.value}_max_extent_mm"] = round(max(extents), 1)
        if thickest > limits.max_slice_spacing_mm:
            flags.append(
                QaFlag(
                    check=QaCheck.SLICE_THICKNESS,
                    role=role,
                    summary=(
                        f"{ROLE_NAMES[role]} slices are {thickest:.1f} mm apart "
                        f"(training data: up to {limits.max_slice_spacing_mm:g} mm)"
                    ),
                )
            )
        if min(extents) < limits.min_extent_mm or max(extents) > limits.max_extent_mm:
            flags.append(
                QaFlag(
                    check=QaCheck.FIELD_OF_VIEW,
                    role=role,
                    summary=(
                        f"{ROLE_NAMES[role]} covers {' x '.join(f'{e:.0f}' for e in extents)} mm "
                        f"(expected {limits.min_extent_mm:g}-{limits.max_extent_mm:g} mm per axis)"
                    ),
                )
            )
    return flags, measured


def brain_flags(brain_volume_ml: float | None, limits: QualitySettings) -> list[QaFlag]:
    if brain_volume_ml is None or limits.min_brain_ml <= brain_volume_ml <= limits.max_brain_ml:
        return []
    return [
        QaFlag(
            check=QaCheck.NOT_A_BRAIN,
            summary=(
                f"brain extraction found {brain_volume_ml:.0f} ml "
                f"(adult brains: {limits.min_brain_ml:g}-{limits.max_brain_ml:g} ml)"
            ),
        )
    ]


def tta_flags(agreement: TtaAgreement, limits: QualitySettings) -> list[QaFlag]:
    """One flag naming every region whose passes disagree beyond a limit."""
    problems = []
    for region, (smallest, largest) in agreement.volume_ml.items():
        if largest < limits.min_region_ml:
            continue
        spread = (largest - smallest) / largest
        disagreement = agreement.disagreement.get(region, 0.0)
        if spread > limits.max_tta_volume_spread or disagreement > limits.max_tta_disagreement:
            problems.append(
                f"{region.value.upper()} {smallest:.1f}-{largest:.1f} ml, "
                f"{disagreement:.0%} of voxels disputed"
            )
    if not problems:
        return []
    return [
        QaFlag(
            check=QaCheck.TTA_DISAGREEMENT,
            summary=f"{agreement.passes} passes disagree: " + "; ".join(problems),
        )
    ]


def _geometry(
    workspace: Workspace, roles: Mapping[Role, str]
) -> dict[Role, tuple[tuple[float, ...], tuple[int, ...]]]:
    """Spacing and size of each distinct series' converted volume (headers only)."""
    geometry: dict[Role, tuple[tuple[float, ...], tuple[int, ...]]] = {}
    seen: set[str] = set()
    for role, uid in roles.items():
        if uid in seen:
            continue
        seen.add(uid)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(workspace.require_file(workspace.volume_path(role))))
        reader.ReadImageInformation()
        geometry[role] = (tuple(reader.GetSpacing()), tuple(reader.GetSize()))
    return geometry


def _number(record: JsonObject, key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, int | float) else None


def assess(workspace: Workspace, limits: QualitySettings) -> QualityReport:
    """Run every check whose inputs the job folder holds."""
    selection = workspace.read_selection()
    preprocessing = workspace.read_preprocessing_record()
    inference = workspace.read_inference()
    checked = [QaCheck.MISSING_SEQUENCE, QaCheck.WEAK_IDENTIFICATION, QaCheck.CONTRAST_MISSING]
    flags = selection_flags(selection)

    roles = {role: series.series_instance_uid for role, series in selection.roles.items()}
    geometry_found, measured = geometry_flags(_geometry(workspace, roles), limits)
    flags += geometry_found
    checked += [QaCheck.SLICE_THICKNESS, QaCheck.FIELD_OF_VIEW]

    motion = series_motion(preprocessing)
    # A stand-in registered onto itself, or the T1c's own series, has not moved.
    motion = {role: moved for role, moved in motion.items() if role not in selection.substitutes}
    flags += motion_flags(motion, limits)
    checked.append(QaCheck.MOTION)

    brain_ml = _number(preprocessing, "brain_volume_ml")
    if brain_ml is not None:
        measured["brain_volume_ml"] = round(brain_ml, 1)
        flags += brain_flags(brain_ml, limits)
        checked.append(QaCheck.NOT_A_BRAIN)

    if inference.tta_agreement is not None:
        flags += tta_flags(inference.tta_agreement, limits)
        checked.append(QaCheck.TTA_DISAGREEMENT)

    return QualityReport(
        flags=tuple(flags),
        checked=tuple(checked),
        motion=motion,
        substitutes=dict(selection.substitutes),
        tta=inference.tta_agreement,
        measured=measured,
    )
