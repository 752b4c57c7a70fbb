"""Rigid registration on real MRI: known transforms, real inter-sequence motion.

The data are one TCGA-LGG patient (../shared/data/nifti): the native Siemens
series (0.9x0.9x5.5 mm, not co-registered; the patient moved ~7 degrees and
~16 mm between T1c and T2) and the same series after the BraTS preprocessing
(SRI24, 1 mm, co-registered by another tool), which gives an independent check
of our inter-sequence transform.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import SimpleITK as sitk

from segnode.pipeline.errors import RegistrationError
from segnode.pipeline.registration import (
    RigidInit,
    RigidResult,
    RigidSettings,
    check_outcome,
    isotropic_grid,
    physical_bounds_mm,
    register_rigid,
    resample_onto,
    rotation_angle_deg,
)
from tests.helpers import SHARED_DATA, require_data

NIFTI = SHARED_DATA / "nifti"
NATIVE = NIFTI / "TCGA-FG-6692_native_siemens"
SRI24 = NIFTI / "TCGA-FG-6692_sri24_skullstripped"
THREADS = 2
MAX_ERROR_MM = 1.0
MAX_ERROR_DEG = 1.0

Affine = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]


@pytest.fixture(autouse=True, scope="module")
def _two_threads() -> Iterator[None]:
    """CI machines have 2 cores; filters outside register_rigid obey this too."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def read(path: Path) -> sitk.Image:
    require_data(path)
    return sitk.ReadImage(str(path), sitk.sitkFloat32)


def affine_of(transform: sitk.Transform) -> Affine:
    """(A, b) with T(x) = A x + b; composites are flattened, last added first applied."""
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        matrix, offset = np.eye(3), np.zeros(3)
        for i in range(composite.GetNumberOfTransforms()):
            inner_a, inner_b = affine_of(composite.GetNthTransform(i))
            matrix, offset = matrix @ inner_a, matrix @ inner_b + offset
        return matrix, offset
    euler = sitk.Euler3DTransform(transform)
    matrix = np.asarray(euler.GetMatrix(), dtype=np.float64).reshape(3, 3)
    center = np.asarray(euler.GetCenter(), dtype=np.float64)
    translation = np.asarray(euler.GetTranslation(), dtype=np.float64)
    return matrix, center + translation - matrix @ center


def known_transform(
    image: sitk.Image,
    angles_deg: tuple[float, float, float],
    translation_mm: tuple[float, float, float],
) -> sitk.Euler3DTransform:
    """A rigid transform about the image centre, as a scanner-side head motion."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(
        image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    )
    transform.SetRotation(*(math.radians(a) for a in angles_deg))
    transform.SetTranslation(translation_mm)
    return transform


def brain_box_corners(image: sitk.Image, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Physical corners of the mask's index bounding box. The displacement
    difference of two affine maps is affine and its norm convex, so its
    maximum over the brain is at most its maximum over these 8 corners."""
    nz = np.argwhere(mask)  # (z, y, x)
    low, high = nz.min(axis=0), nz.max(axis=0)
    return np.asarray(
        [
            image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
            for z in (low[0], high[0])
            for y in (low[1], high[1])
            for x in (low[2], high[2])
        ]
    )


def brain_points(
    image: sitk.Image, mask: npt.NDArray[np.bool_], step: int = 50
) -> npt.NDArray[np.float64]:
    """Physical points of every ``step``-th voxel inside ``mask`` (N x 3)."""
    index_xyz = np.argwhere(mask)[::step, ::-1].astype(np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    return np.asarray(image.GetOrigin()) + (index_xyz * spacing) @ direction.T


def max_displacement_mm(first: Affine, second: Affine, points: npt.NDArray[np.float64]) -> float:
    (a1, b1), (a2, b2) = first, second
    return float(np.linalg.norm(points @ (a1 - a2).T + (b1 - b2), axis=1).max())


def residual_angle_deg(truth: sitk.Transform, estimate: sitk.Transform) -> float:
    """Rotation angle of R_true^-1 R_est."""
    residual = affine_of(truth)[0].T @ affine_of(estimate)[0]
    return math.degrees(math.acos(float(np.clip((np.trace(residual) - 1.0) / 2.0, -1.0, 1.0))))


def otsu_head(image: sitk.Image) -> npt.NDArray[np.bool_]:
    return sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1)) > 0


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def recover(
    fixed: sitk.Image, truth: sitk.Euler3DTransform, mask: sitk.Image | None
) -> tuple[RigidResult, float, float]:
    """Register fixed against its copy moved by ``truth``; return (result, mm, deg)."""
    # moving(T(x)) = fixed(x): resample through T^-1 so that T is what registration finds.
    moving = resample_onto(fixed, fixed, truth.GetInverse())
    result = register_rigid(fixed, moving, fixed_mask=mask, threads=THREADS)
    brain = sitk.GetArrayViewFromImage(mask) > 0 if mask is not None else otsu_head(fixed)
    error_mm = max_displacement_mm(
        affine_of(truth), affine_of(result.transform), brain_box_corners(fixed, brain)
    )
    error_deg = residual_angle_deg(truth, result.transform)
    print(
        f"\nrecovered within {error_mm:.3f} mm, {error_deg:.3f} deg; {result.iterations} "
        f"iterations, {result.seconds:.1f} s, MI {result.metric_before:.3f} -> {result.metric_after:.3f}"
    )
    return result, error_mm, error_deg


@pytest.fixture(scope="module")
def native_t1c() -> sitk.Image:
    return read(NATIVE / "t1c.nii.gz")


@pytest.fixture(scope="module")
def native_t2() -> sitk.Image:
    return read(NATIVE / "t2.nii.gz")


@pytest.fixture(scope="module")
def t2_onto_t1c(native_t1c: sitk.Image, native_t2: sitk.Image) -> RigidResult:
    return register_rigid(
        native_t1c, native_t2, threads=THREADS, fixed_label="t1c", moving_label="t2"
    )


def test_recovers_known_motion_on_1mm_brain() -> None:
    fixed = read(SRI24 / "t1c.nii.gz")
    mask = sitk.Cast(fixed > 0, sitk.sitkUInt8)
    truth = known_transform(fixed, (3.0, 0.0, 8.0), (6.0, 8.0, 0.0))

    result, error_mm, error_deg = recover(fixed, truth, mask)

    assert error_mm < MAX_ERROR_MM
    assert error_deg < MAX_ERROR_DEG
    assert result.metric_after < result.metric_before - 0.3


def test_recovers_known_motion_on_thick_slices(native_t1c: sitk.Image) -> None:
    # 8 degrees about x tilts through the 5.5 mm slices: the hard direction.
    truth = known_transform(native_t1c, (8.0, 0.0, 3.0), (6.0, -6.0, 5.0))

    result, error_mm, error_deg = recover(native_t1c, truth, mask=None)

    assert error_mm < MAX_ERROR_MM
    assert error_deg < MAX_ERROR_DEG
    assert result.metric_after < result.metric_before


def test_t2_onto_t1c_improves_and_is_plausible(
    native_t1c: sitk.Image, native_t2: sitk.Image, t2_onto_t1c: RigidResult
) -> None:
    result = t2_onto_t1c
    angle = residual_angle_deg(sitk.Euler3DTransform(), result.transform)
    # Displacement of the rotation centre (the T1c's centre of mass under MOMENTS).
    shift = float(np.linalg.norm(result.translation_mm()))
    head = otsu_head(native_t1c)
    dice_before = dice(head, otsu_head(resample_onto(native_t2, native_t1c)))
    dice_after = dice(head, otsu_head(resample_onto(native_t2, native_t1c, result.transform)))
    print(
        f"\nt2 -> t1c: {result.angles_deg()} deg, {result.translation_mm()} mm "
        f"(rotation {angle:.1f} deg); MI {result.metric_before:.3f} -> {result.metric_after:.3f}; "
        f"head Dice {dice_before:.3f} -> {dice_after:.3f}; {result.seconds:.1f} s"
    )

    assert result.metric_after < result.metric_before - 0.1
    # Real motion between the series, not a runaway: a head turns < 15 degrees in a coil.
    assert 1.0 < angle < 15.0
    assert shift < 40.0
    # An independent check of the fit, not the metric it optimised: head outlines overlap.
    assert dice_after > dice_before + 0.05


def test_t2_onto_t1c_agrees_with_brats_coregistration(
    native_t1c: sitk.Image, native_t2: sitk.Image, t2_onto_t1c: RigidResult
) -> None:
    """Close the triangle through the BraTS-preprocessed pair (aligned by another tool).

    sri24 -> native t1c and sri24 -> native t2 are each same-contrast fits;
    if our t1c -> t2 transform is right, t1c->t2 o sri->t1c equals sri->t2.
    """
    sri_t1c, sri_t2 = read(SRI24 / "t1c.nii.gz"), read(SRI24 / "t2.nii.gz")
    brain = sitk.Cast(sri_t1c > 0, sitk.sitkUInt8)
    to_t1c = register_rigid(sri_t1c, native_t1c, fixed_mask=brain, threads=THREADS)
    to_t2 = register_rigid(sri_t2, native_t2, fixed_mask=brain, threads=THREADS)
    points = brain_points(sri_t1c, sitk.GetArrayViewFromImage(brain) > 0)

    via_t1c = sitk.CompositeTransform([t2_onto_t1c.transform, to_t1c.transform])
    disagreement_mm = max_displacement_mm(affine_of(via_t1c), affine_of(to_t2.transform), points)
    without_mm = max_displacement_mm(
        affine_of(to_t1c.transform), affine_of(to_t2.transform), points
    )
    print(
        f"\ntriangle: max {disagreement_mm:.2f} mm over the brain "
        f"(without our t2 -> t1c fit: {without_mm:.1f} mm)"
    )

    assert disagreement_mm < 2.0
    assert without_mm > 10.0


def test_same_seed_repeats_the_fit(
    native_t1c: sitk.Image, native_t2: sitk.Image, t2_onto_t1c: RigidResult
) -> None:
    again = register_rigid(native_t1c, native_t2, threads=THREADS)
    points = brain_points(native_t1c, otsu_head(native_t1c))
    spread_mm = max_displacement_mm(
        affine_of(t2_onto_t1c.transform), affine_of(again.transform), points
    )
    print(f"\nsame seed, {THREADS} threads: runs differ by {spread_mm:.2e} mm")

    # Same sample points; only ITK's thread-order summation differs (~1e-5 mm).
    assert spread_mm < 1e-3
    assert again.metric_after == pytest.approx(t2_onto_t1c.metric_after, abs=1e-6)


def test_single_threaded_runs_are_bit_identical(
    native_t1c: sitk.Image, native_t2: sitk.Image
) -> None:
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        first = register_rigid(native_t1c, native_t2, threads=1)
        second = register_rigid(native_t1c, native_t2, threads=1)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)

    assert first.transform.GetParameters() == second.transform.GetParameters()
    assert first.transform.GetFixedParameters() == second.transform.GetFixedParameters()
    assert (first.metric_before, first.metric_after) == (second.metric_before, second.metric_after)
    assert first.iterations == second.iterations
    assert first.metric_threads == 1


def test_another_seed_samples_differently_but_fits_the_same(
    native_t1c: sitk.Image, native_t2: sitk.Image, t2_onto_t1c: RigidResult
) -> None:
    other = register_rigid(native_t1c, native_t2, threads=THREADS, seed=1)
    points = brain_points(native_t1c, otsu_head(native_t1c))
    spread_mm = max_displacement_mm(
        affine_of(t2_onto_t1c.transform), affine_of(other.transform), points
    )
    print(f"\nseed 0 vs seed 1: {spread_mm:.3f} mm")

    # The seed reaches the sampler: another sample, another (equally good) optimum.
    assert other.transform.GetParameters() != t2_onto_t1c.transform.GetParameters()
    assert other.metric_after == pytest.approx(t2_onto_t1c.metric_after, abs=2e-3)
    assert spread_mm < 1.0


def test_record_is_json_and_rebuilds_the_transform(t2_onto_t1c: RigidResult) -> None:
    record = json.loads(json.dumps(t2_onto_t1c.as_record()))
    rebuilt = sitk.Euler3DTransform()
    rebuilt.SetFixedParameters(record["transform"]["fixed_parameters"])
    rebuilt.SetParameters(record["transform"]["parameters"])

    assert rebuilt.TransformPoint((10.0, -20.0, 30.0)) == t2_onto_t1c.transform.TransformPoint(
        (10.0, -20.0, 30.0)
    )
    assert record["settings"]["init"] == "moments"
    assert record["settings"]["shrink_factors"] == [4, 2, 1]
    assert record["metric_after"] < record["metric_before"]
    assert record["iterations"] > 0 and record["seconds"] > 0
    assert list(t2_onto_t1c.angles_deg()) == pytest.approx(
        [math.degrees(a) for a in t2_onto_t1c.transform.GetParameters()[:3]]
    )


def test_isotropic_grid_of_oblique_thick_slices_covers_them(native_t1c: sitk.Image) -> None:
    grid = isotropic_grid(native_t1c, spacing_mm=1.0)
    low, high = physical_bounds_mm(native_t1c)
    grid_low, grid_high = physical_bounds_mm(grid)

    assert grid.GetSpacing() == (1.0, 1.0, 1.0)
    assert grid.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert np.all(grid_low <= low + 1e-6) and np.all(grid_high >= high - 1e-6)
    # Covering, but not by more than one voxel per axis.
    assert np.all((grid_high - grid_low) - (high - low) < 1.0 + 1e-6)


def test_isotropic_grid_of_axis_aligned_1mm_is_the_same_grid_and_values_survive() -> None:
    image = read(SRI24 / "t1c.nii.gz")
    labels = sitk.ReadImage(str(SRI24 / "seg_fusion_mav_5algos.nii.gz"))
    grid = isotropic_grid(image, spacing_mm=1.0)

    assert grid.GetSize() == image.GetSize()
    assert np.allclose(grid.GetOrigin(), image.GetOrigin(), atol=1e-6)
    resampled = resample_onto(image, grid)
    assert resampled.GetPixelID() == sitk.sitkFloat32
    # ITK's linear weights at exact grid points leave ~1e-11 of rounding on a few voxels.
    np.testing.assert_allclose(
        sitk.GetArrayViewFromImage(resampled), sitk.GetArrayViewFromImage(image), rtol=0, atol=1e-6
    )
    # Labels: nearest neighbour keeps the pixel type and every label.
    relabelled = resample_onto(
        labels, isotropic_grid(labels), interpolator=sitk.sitkNearestNeighbor
    )
    assert relabelled.GetPixelID() == labels.GetPixelID()
    assert np.array_equal(
        sitk.GetArrayViewFromImage(relabelled), sitk.GetArrayViewFromImage(labels)
    )


def test_isotropic_grid_at_2mm_halves_the_voxel_count_per_axis() -> None:
    image = sitk.Image([240, 240, 155], sitk.sitkUInt8)
    grid = isotropic_grid(image, spacing_mm=2.0)

    assert grid.GetSize() == (120, 120, 78)
    assert np.allclose(
        np.mean(physical_bounds_mm(grid), axis=0), np.mean(physical_bounds_mm(image), axis=0)
    )
    with pytest.raises(RegistrationError, match="positive"):
        isotropic_grid(image, spacing_mm=0.0)


def test_images_that_do_not_overlap_raise(native_t1c: sitk.Image, native_t2: sitk.Image) -> None:
    far = sitk.Image(native_t2)
    far.SetOrigin(tuple(o + 2000.0 for o in native_t2.GetOrigin()))
    started = time.perf_counter()
    with pytest.raises(RegistrationError, match=r"t2 \(224x256x26 voxels.*onto t1c.*SimpleITK"):
        register_rigid(
            native_t1c,
            far,
            threads=THREADS,
            settings=RigidSettings(init=RigidInit.IDENTITY),
            fixed_label="t1c",
            moving_label="t2",
        )
    assert time.perf_counter() - started < 10.0


def test_bad_inputs_raise(native_t1c: sitk.Image) -> None:
    empty = sitk.Image(native_t1c.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(native_t1c)
    with pytest.raises(RegistrationError, match="mask is empty"):
        register_rigid(native_t1c, native_t1c, fixed_mask=empty)
    with pytest.raises(RegistrationError, match="moving must be a 3-D scalar image"):
        register_rigid(native_t1c, native_t1c[:, :, 10])
    with pytest.raises(RegistrationError, match="one sigma per level"):
        RigidSettings(shrink_factors=(4, 2, 1), smoothing_sigmas_mm=(2.0, 1.0))


def test_check_outcome_rejects_worse_metric_nan_and_runaway_rotation() -> None:
    what = "t2 onto t1c"
    check_outcome(what, (0.1, -0.05, 0.2, 5.0, 0.0, -16.0), -0.40, -0.60, "converged")
    with pytest.raises(
        RegistrationError, match=r"t2 onto t1c made the metric worse \(-0.6000 -> -0.4000"
    ):
        check_outcome(what, (0.0,) * 6, -0.60, -0.40, "max iterations")
    with pytest.raises(RegistrationError, match="non-finite"):
        check_outcome(what, (math.nan,) + (0.0,) * 5, -0.40, -0.60, "converged")
    with pytest.raises(RegistrationError, match=r"rotated by 40.0 degrees \(limit 30.0\)"):
        check_outcome(
            what, (0.0, 0.0, math.radians(40.0), 0.0, 0.0, 0.0), -0.40, -0.60, "converged"
        )
    assert rotation_angle_deg((math.radians(3.0), 0.0, math.radians(4.0))) == pytest.approx(
        5.0, abs=0.01
    )
