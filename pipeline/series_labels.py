"""The label map on a series that registration moved against the T1c, in that series' geometry.

Why: the four series of a study share one frame of reference, but the head moves between
them (registration found TCGA-FG-6692's T2 and FLAIR ~16 mm and 8-14° off its T1c). A
viewer draws the T1c's SEG on the FLAIR by patient coordinates, so there it lies beside the
lesion, and oedema is read on the FLAIR. Such a series gets a SEG of its own
(``segnode.pipeline.outputs.writer.RegisteredSeriesLabels``).

How: the network's 1 mm label map (``inference/labels_grid.mha``) is resampled onto the
series' own grid, nearest neighbour, through series point -> T1c point (the inverse of the
registration, which maps T1c points to the series' points) -> grid point (the inverse of
``to_reference``; identity without an atlas): ``labels_to_source`` with one transform more.
From the grid, not from the T1c's source label map, so each voxel is resampled once: nearest
neighbour twice through 5.5 mm slices would shift edges by up to half a slice more.

The registrations are rebuilt from the preprocessing record, not saved as ``.tfm`` files:
the record already holds each transform's parameters and fixed parameters (JSON keeps
doubles exactly), it is written in the same step as the grid, and it is what the job's
provenance shows, so the overlay is made from exactly the audited numbers and no second
copy can disagree with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from segnode.config.settings import ResultSeriesSettings
from segnode.pipeline.errors import PipelineError
from segnode.pipeline.outputs.writer import RegisteredSeriesLabels
from segnode.pipeline.quality.record import SeriesMotion
from segnode.pipeline.registration import resample_onto
from segnode.pipeline.workspace import GRID_LABELS, Workspace, WorkspaceError
from segnode.pipeline.workspace_images import read_image, read_volume
from segnode.vocabulary import Role

log = logging.getLogger(__name__)


def grid_label_image(labels_xyz: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """The network's (x, y, z) label map as a uint8 image with the grid's geometry.

    Raises:
        PipelineError: the map's shape is not the grid's size.
    """
    if labels_xyz.shape != tuple(grid.GetSize()):
        raise PipelineError(
            f"label map shape {labels_xyz.shape} differs from the preprocessing grid {grid.GetSize()}"
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_xyz.astype(np.uint8).transpose(2, 1, 0)))
    image.CopyInformation(grid)
    return image


def registration_transform(
    preprocessing_record: Mapping[str, object], role: Role
) -> sitk.Euler3DTransform:
    """The rigid registration of ``role`` onto the T1c (T1c point -> series point), rebuilt.

    Raises:
        WorkspaceError: the record holds no Euler3D transform for ``role``.
    """
    registrations = preprocessing_record.get("registration")
    entry = registrations.get(role.value) if isinstance(registrations, Mapping) else None
    transform = entry.get("transform") if isinstance(entry, Mapping) else None
    if not isinstance(transform, Mapping) or transform.get("type") != "Euler3DTransform":
        raise WorkspaceError(
            f"the preprocessing record holds no Euler3D registration of the {role.value}"
        )
    parameters, fixed = transform.get("parameters"), transform.get("fixed_parameters")
    if (
        not isinstance(parameters, list)
        or len(parameters) != 6
        or not isinstance(fixed, list)
        or len(fixed) not in (3, 4)
    ):
        raise WorkspaceError(
            f"the preprocessing record's registration of the {role.value} is malformed "
            "(expected 6 parameters and 3 or 4 fixed parameters)"
        )
    rebuilt = sitk.Euler3DTransform()
    rebuilt.SetFixedParameters([float(value) for value in fixed])
    rebuilt.SetParameters([float(value) for value in parameters])
    return rebuilt


def labels_to_series(
    grid_labels: sitk.Image,
    to_reference: sitk.Transform,
    registration: sitk.Transform,
    series: sitk.Image,
) -> sitk.Image:
    """The grid's label map in exactly ``series``' geometry, nearest neighbour.

    Args:
        grid_labels: labels on the cropped 1 mm grid (``grid_label_image``).
        to_reference: grid point -> T1c point (``PreprocessedStudy.to_reference``).
        registration: T1c point -> series point (``RigidResult.transform``).
        series: the series' converted volume (only its geometry is used).
    """
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(to_reference.GetInverse())  # applied second: T1c point -> grid
    composite.AddTransform(registration.GetInverse())  # applied first: series point -> T1c
    return resample_onto(grid_labels, series, composite, sitk.sitkNearestNeighbor)


def moved_beyond_limits(motion: SeriesMotion, settings: ResultSeriesSettings) -> bool:
    """True when the T1c's SEG, drawn on this series by patient coordinates, is off enough."""
    return (
        motion.translation_mm >= settings.registered_series_min_translation_mm
        or motion.rotation_deg >= settings.registered_series_min_rotation_deg
    )


def registered_series_decisions(
    motion: Mapping[Role, SeriesMotion],
    settings: ResultSeriesSettings,
    stand_ins: Mapping[Role, Role] | None = None,
) -> dict[Role, dict[str, object]]:
    """For each role in ``registered_series_segs``: its motion, whether it gets a SEG, and why.

    Args:
        motion: each registered series' motion (``QualityReport.motion``: the quality
            checks' ``series_motion`` of the preprocessing record, stand-ins left out).
        stand_ins: missing role -> the role whose series stood in (``Selection.substitutes``):
            such a role has no series of its own to draw on.
    """
    decisions: dict[Role, dict[str, object]] = {}
    limits = (
        f"{settings.registered_series_min_translation_mm:g} mm / "
        f"{settings.registered_series_min_rotation_deg:g}°"
    )
    for role in settings.registered_series_segs:
        stand_in = (stand_ins or {}).get(role)
        moved = motion.get(role)
        if stand_in is not None:
            decisions[role] = {"seg": False, "why": f"no {role.value} series: the {stand_in.value} stood in"}
        elif moved is None:
            decisions[role] = {"seg": False, "why": "no registration onto the T1c recorded"}
        else:
            beyond = moved_beyond_limits(moved, settings)
            decisions[role] = {
                "translation_mm": round(moved.translation_mm, 3),
                "rotation_deg": round(moved.rotation_deg, 3),
                "seg": beyond,
                "why": (
                    f"moved {moved.translation_mm:.1f} mm / {moved.rotation_deg:.1f}° "
                    + (f"(limits {limits})" if beyond else f"below {limits}: the T1c's SEG serves")
                ),
            }
    return decisions


def registered_series_labels(
    workspace: Workspace,
    settings: ResultSeriesSettings,
    motion: Mapping[Role, SeriesMotion],
) -> tuple[list[RegisteredSeriesLabels], dict[str, object]]:
    """The label maps the write step turns into SEGs on moved series, and the step's record.

    Reads the preprocessing record (registrations), ``preprocessed/to_reference.tfm``, the
    grid label map, the selection and each moved series' converted volume.

    A job folder inferred before the grid label map was saved has none: it gets the T1c's
    SEG only, recorded (and logged) with how to get the others (``segnode jobs retry ID
    --from inferring``), rather than failing a job whose T1c results are right.
    """
    selection = workspace.read_selection()
    decisions = registered_series_decisions(motion, settings, selection.substitutes)
    record: dict[str, object] = {role.value: decision for role, decision in decisions.items()}
    moved = [role for role, decision in decisions.items() if decision["seg"]]
    if not moved:
        return [], record
    if not workspace.grid_labels_path.is_file():
        for role in moved:
            record[role.value] = {
                **decisions[role],
                "seg": False,
                "why": f"{GRID_LABELS} is missing (inferred by an older version); retry the "
                "job from inferring to get this SEG",
            }
        log.warning(
            "no SEG on moved series: the grid label map is missing",
            extra={"roles": [role.value for role in moved]},
        )
        return [], record
    preprocessing = workspace.read_preprocessing_record()
    grid_labels = read_image(workspace, workspace.grid_labels_path)
    to_reference = sitk.ReadTransform(str(workspace.require_file(workspace.to_reference_path)))
    labelled: list[RegisteredSeriesLabels] = []
    for role in moved:
        volume = read_volume(workspace, role)
        labels = labels_to_series(
            grid_labels, to_reference, registration_transform(preprocessing, role), volume.image
        )
        labelled.append(
            RegisteredSeriesLabels(
                role=role,
                source_files=selection.files(role),
                slices=volume.slices,
                labels=labels,
            )
        )
    return labelled, record

