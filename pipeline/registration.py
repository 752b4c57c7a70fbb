"""Rigid co-registration of MR volumes, as in the BraTS preprocessing.

Why rigid: sequences of one patient differ by head position only, and the
tumour models expect every sequence voxel-aligned on one grid. The method is
SimpleITK's v4 framework with Mattes mutual information (sequences differ in
contrast, so an intensity-difference metric would be wrong), a three-level
pyramid, an Euler3D transform, and regular step gradient descent with scales
from physical shifts, so that a unit step moves voxels by about 1 mm whether it
comes from a rotation or a translation.

Determinism: the metric samples a fixed set of points (random, but from a given
seed, never the wall clock), so repeated runs agree to ~1e-5 mm. Bit-identical
parameters also need SimpleITK's *global* default thread count at 1: ITK's
Mattes MI uses the global threader (not the method's thread count) and merges
per-thread histograms in the order threads finish. We do not change that
global here; the caller (worker start-up, tests) owns it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from segnode.pipeline.errors import RegistrationError

_IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# metric_after may exceed metric_before by this much before we call it worse:
# started at the optimum, the optimiser's last steps wander by ~1e-5, while a
# real failure costs tenths.
_METRIC_SLACK = 1e-3
# ITK seeds are uint32 and we shift by one (see _itk_seed).
_MAX_SEED = 2**32 - 1
# Heads in a coil, and scanner space against an atlas, differ by < 20 degrees
# (measured: 8 between TCGA-FG-6692's series, 15 onto SRI24); patient
# coordinates follow the patient even in decubitus positions.
_MAX_ROTATION_DEG = 30.0
# Interpolators whose output must keep the input's integer labels.
_LABEL_INTERPOLATORS = frozenset({sitk.sitkNearestNeighbor, sitk.sitkLabelGaussian})


class RigidInit(StrEnum):
    """How the Euler3D transform starts.

    MOMENTS (default) and GEOMETRY use ``CenteredTransformInitializer``:
    MOMENTS aligns the intensity centres of mass, which works whether or not
    the scanner coordinates mean anything (e.g. onto an atlas); GEOMETRY aligns
    the grid centres. IDENTITY trusts the scanner coordinates and rotates
    about the fixed image's centre.
    """

    MOMENTS = "moments"
    GEOMETRY = "geometry"
    IDENTITY = "identity"


@dataclass(frozen=True, slots=True)
class RigidSettings:
    """Every parameter of the optimisation; recorded in provenance.

    Units: sigmas in mm; learning rate and minimum step in scaled units of
    about 1 mm of voxel shift; sampling as a fraction of the voxels the metric
    uses (inside the mask, if any) at each pyramid level.
    """

    init: RigidInit = RigidInit.MOMENTS
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    histogram_bins: int = 32
    sampling_fraction: float = 0.2
    # A 1 mm brain holds ~9 M voxels; for six parameters MI is as accurate
    # from 50 k points (measured: < 0.3 mm) at a fraction of the time.
    max_samples_per_level: int = 50_000
    learning_rate: float = 2.0
    min_step: float = 1e-3
    max_iterations: int = 200
    relaxation_factor: float = 0.5
    gradient_tolerance: float = 1e-6
    max_rotation_deg: float = _MAX_ROTATION_DEG

    def __post_init__(self) -> None:
        if not self.shrink_factors or len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            raise RegistrationError(
                f"registration pyramid mismatch: shrink factors {self.shrink_factors} vs "
                f"smoothing sigmas {self.smoothing_sigmas_mm} mm; give one sigma per level"
            )
        if not 0.0 < self.sampling_fraction <= 1.0:
            raise RegistrationError(
                f"registration sampling fraction {self.sampling_fraction} is not in (0, 1]"
            )
        if self.max_samples_per_level < 1000:
            raise RegistrationError(
                f"max_samples_per_level {self.max_samples_per_level} is too few for a stable "
                "mutual-information estimate; use at least 1000"
            )

    def as_record(self) -> dict[str, object]:
        """JSON-friendly copy (enum as its value, tuples as lists)."""
        record = asdict(self)
        record["init"] = self.init.value
        record["shrink_factors"] = list(self.shrink_factors)
        record["smoothing_sigmas_mm"] = list(self.smoothing_sigmas_mm)
        return record


@dataclass(frozen=True)
class RigidResult:
    """Outcome of :func:`register_rigid`.

    ``transform`` maps points of the FIXED image's physical space to the MOVING
    image's space (SimpleITK convention), so ``resample_onto(moving, fixed,
    transform)`` brings the moving image onto the fixed grid. Metrics follow
    SimpleITK's sign: Mattes MI is negated, lower is better. Both are taken
    over every fixed voxel (inside the mask) at full resolution, so they are
    comparable and do not depend on the seed.
    """

    transform: sitk.Euler3DTransform
    metric_before: float
    metric_after: float
    iterations: int
    seconds: float
    stop_condition: str = ""
    seed: int = 0
    threads: int = 0
    metric_threads: int = 0
    settings: RigidSettings = field(default_factory=RigidSettings)

    def angles_deg(self) -> tuple[float, float, float]:
        """Euler angles about x, y, z in degrees (ITK order: R = Rz Rx Ry)."""
        ax, ay, az = self.transform.GetParameters()[:3]
        return (math.degrees(ax), math.degrees(ay), math.degrees(az))

    def translation_mm(self) -> tuple[float, float, float]:
        """Translation in mm (LPS), applied after the rotation about the centre."""
        tx, ty, tz = self.transform.GetParameters()[3:6]
        return (float(tx), float(ty), float(tz))

    def as_record(self) -> dict[str, object]:
        """JSON-friendly provenance: enough to rebuild the transform and rerun."""
        return {
            "step": "register_rigid",
            "transform": {
                "type": "Euler3DTransform",
                "parameters": [float(p) for p in self.transform.GetParameters()],
                "fixed_parameters": [float(p) for p in self.transform.GetFixedParameters()],
                "angles_deg": list(self.angles_deg()),
                "translation_mm": list(self.translation_mm()),
            },
            "metric": "mattes_mutual_information",
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "iterations": self.iterations,
            "stop_condition": self.stop_condition,
            "seconds": self.seconds,
            "seed": self.seed,
            "threads": self.threads,
            "metric_threads": self.metric_threads,
            "settings": self.settings.as_record(),
        }


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_mask: sitk.Image | None = None,
    seed: int = 0,
    threads: int | None = None,
    settings: RigidSettings | None = None,
    fixed_label: str = "fixed",
    moving_label: str = "moving",
) -> RigidResult:
    """Find the rigid transform that aligns ``moving`` to ``fixed``.

    Args:
        fixed: 3-D scalar reference image (cast to float32 here).
        moving: 3-D scalar image to align (cast to float32 here).
        fixed_mask: optional brain mask in the fixed image's physical space
            (any grid; non-zero is inside). It restricts the metric to the
            brain so that background, skull and neck do not drive the fit.
        seed: seed of the metric's random sampling (0 .. 2**32 - 2); same seed,
            same result. Never the wall clock: provenance must be replayable.
        threads: threads for the registration method (pyramid, optimiser);
            ``None`` uses SimpleITK's global default, which the metric always
            uses (see the module docstring on bit-identical results).
        settings: optimisation parameters; defaults to :class:`RigidSettings`.
        fixed_label: the fixed image's role for error messages (e.g. "t1c").
        moving_label: the moving image's role for error messages (e.g. "t2").

    Returns:
        The transform (fixed space -> moving space), the metric before and
        after, iterations summed over all levels, and the wall time in s.

    Raises:
        RegistrationError: an input is not a 3-D scalar image, the mask is
            empty, SimpleITK failed (e.g. the images do not overlap), or the
            result is implausible (metric worse, non-finite parameters).
    """
    start = time.perf_counter()
    chosen = settings if settings is not None else RigidSettings()
    what = f"rigid registration of {moving_label} {_describe(moving)} onto {fixed_label} {_describe(fixed)}"
    if threads is not None and threads < 1:
        raise RegistrationError(f"{what}: threads must be at least 1, got {threads}")
    if not 0 <= seed < _MAX_SEED:
        raise RegistrationError(f"{what}: seed must be in 0..{_MAX_SEED - 1}, got {seed}")
    fixed_f = _as_float32(fixed, fixed_label, what)
    moving_f = _as_float32(moving, moving_label, what)
    mask = _as_mask(fixed_mask, what) if fixed_mask is not None else None

    global_threads = int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    iterations = [0]
    try:
        initial = _initial_transform(fixed_f, moving_f, chosen.init)
        metric_before = _evaluate_metric(fixed_f, moving_f, initial, mask, chosen, threads)
        method = _configure(fixed_f, mask, chosen, seed, threads)
        transform = sitk.Euler3DTransform(initial)
        method.SetInitialTransform(transform, inPlace=True)
        method.AddCommand(sitk.sitkIterationEvent, lambda: _count(iterations))
        method.Execute(fixed_f, moving_f)
        stop_condition = str(method.GetOptimizerStopConditionDescription())
        metric_after = _evaluate_metric(fixed_f, moving_f, transform, mask, chosen, threads)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise RegistrationError(
            f"{what} failed in SimpleITK: {detail}; check that the images overlap in physical "
            "space (else try init=moments) and that the mask covers the brain"
        ) from exc

    check_outcome(
        what,
        transform.GetParameters(),
        metric_before,
        metric_after,
        stop_condition,
        chosen.max_rotation_deg,
    )
    return RigidResult(
        transform=sitk.Euler3DTransform(transform),
        metric_before=metric_before,
        metric_after=metric_after,
        iterations=iterations[0],
        seconds=time.perf_counter() - start,
        stop_condition=stop_condition,
        seed=seed,
        threads=threads if threads is not None else global_threads,
        metric_threads=global_threads,
        settings=chosen,
    )


def check_outcome(
    what: str,
    parameters: tuple[float, ...],
    metric_before: float,
    metric_after: float,
    stop_condition: str,
    max_rotation_deg: float = _MAX_ROTATION_DEG,
) -> None:
    """Reject results that cannot be right, whatever the optimiser reports.

    Args:
        what: which registration, for the message.
        parameters: Euler3D parameters (angles in rad, translation in mm).
        metric_before: metric at the initial transform.
        metric_after: metric at the result.
        stop_condition: the optimiser's stop reason, for the message.
        max_rotation_deg: largest plausible rotation of the result.

    Raises:
        RegistrationError: non-finite parameters or metric, a metric worse
            than at the start, or a rotation beyond ``max_rotation_deg``.
    """
    values = (*parameters, metric_before, metric_after)
    if not all(math.isfinite(v) for v in values):
        raise RegistrationError(
            f"{what} gave non-finite parameters or metric ({values}); inspect the inputs"
        )
    if metric_after > metric_before + _METRIC_SLACK:
        raise RegistrationError(
            f"{what} made the metric worse ({metric_before:.4f} -> {metric_after:.4f}; "
            f"stop: {stop_condition}); the start is probably too far off, try another init"
        )
    rotation_deg = rotation_angle_deg(parameters[:3])
    if rotation_deg > max_rotation_deg:
        raise RegistrationError(
            f"{what} rotated by {rotation_deg:.1f} degrees (limit {max_rotation_deg}); a head "
            "does not turn that far: check the series' orientation tags, or try another init"
        )


def rotation_angle_deg(angles_rad: tuple[float, ...]) -> float:
    """Angle (degrees) of the single rotation equal to ITK's Euler angles x, y, z."""
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*angles_rad)
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    cosine = (float(np.trace(matrix)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def resample_onto(
    moving: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``moving`` onto ``reference``'s grid through ``transform``.

    ``transform`` maps reference points to moving points (as returned by
    :func:`register_rigid` with reference = fixed); ``None`` means identity,
    i.e. both images already share one physical space.

    Intensity interpolators return float32, because linear interpolation of
    integer data would otherwise be rounded; label interpolators (nearest
    neighbour, label Gaussian) keep the input's pixel type so labels stay labels.
    """
    chosen = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    if interpolator in _LABEL_INTERPOLATORS:
        source, pixel_type = moving, moving.GetPixelID()
    else:
        source, pixel_type = sitk.Cast(moving, sitk.sitkFloat32), sitk.sitkFloat32
    return sitk.Resample(source, reference, chosen, interpolator, default_value, pixel_type)


def isotropic_grid(image: sitk.Image, spacing_mm: float = 1.0) -> sitk.Image:
    """An empty uint8 image: an axis-aligned grid covering ``image``.

    Why: models and BraTS outputs expect axis-aligned (identity direction in
    LPS) isotropic volumes, while scanner series are oblique and anisotropic.
    The grid spans the physical bounding box of ``image``'s voxels (their
    edges, not centres) and is centred on it, so a grid that is already axis
    aligned at this spacing comes back unchanged.

    Raises:
        RegistrationError: spacing not positive, or ``image`` not 3-D.
    """
    if not (math.isfinite(spacing_mm) and spacing_mm > 0.0):
        raise RegistrationError(f"isotropic grid spacing must be positive, got {spacing_mm} mm")
    if image.GetDimension() != 3:
        raise RegistrationError(f"isotropic grid needs a 3-D image, got {_describe(image)}")
    low, high = physical_bounds_mm(image)
    # The tolerance keeps 240 voxels of 1 mm at 240, not 241 after rounding noise.
    size = [max(1, math.ceil(float(extent) / spacing_mm - 1e-6)) for extent in high - low]
    origin = (low + high) / 2.0 - (np.asarray(size, dtype=np.float64) - 1.0) * spacing_mm / 2.0
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing((spacing_mm, spacing_mm, spacing_mm))
    grid.SetDirection(_IDENTITY_DIRECTION)
    grid.SetOrigin(tuple(float(v) for v in origin))
    return grid


def physical_bounds_mm(
    image: sitk.Image,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Lower and upper LPS corners (mm) of the axis-aligned box around all voxels."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint((i - 0.5, j - 0.5, k - 0.5))
        for i in (0, size[0])
        for j in (0, size[1])
        for k in (0, size[2])
    ]
    points = np.asarray(corners, dtype=np.float64)
    return points.min(axis=0), points.max(axis=0)


def _configure(
    fixed: sitk.Image,
    mask: sitk.Image | None,
    settings: RigidSettings,
    seed: int,
    threads: int | None,
) -> sitk.ImageRegistrationMethod:
    """The registration method, less its transform."""
    method = sitk.ImageRegistrationMethod()
    if threads is not None:
        method.SetNumberOfThreads(threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(
        _sampling_per_level(fixed, mask, settings), _itk_seed(seed)
    )
    if mask is not None:
        method.SetMetricFixedMask(mask)
    # ITK's default precomputes Gaussian gradient images of both full volumes
    # at every level: ~5 s of a 6 s run on a 1 mm brain with 2 threads, and
    # no more accurate than central differences at the sampled points.
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.learning_rate,
        minStep=settings.min_step,
        numberOfIterations=settings.max_iterations,
        relaxationFactor=settings.relaxation_factor,
        gradientMagnitudeTolerance=settings.gradient_tolerance,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _sampling_per_level(
    fixed: sitk.Image, mask: sitk.Image | None, settings: RigidSettings
) -> list[float]:
    """Sampling fraction of the fixed grid per pyramid level.

    ITK draws random points over the whole fixed grid and then drops those
    outside the mask, so the cap is divided by the mask's share of the grid:
    a brain filling 17% of the grid would otherwise keep 17% of the points.
    """
    inside = _inside_share(fixed, mask)
    fractions = []
    for shrink in settings.shrink_factors:
        voxels = math.prod(max(1, math.ceil(n / shrink)) for n in fixed.GetSize())
        cap = settings.max_samples_per_level / (voxels * inside)
        fractions.append(min(1.0, settings.sampling_fraction, cap))
    return fractions


def _inside_share(fixed: sitk.Image, mask: sitk.Image | None) -> float:
    """Share of the fixed image's volume inside the mask (1 without a mask)."""
    if mask is None:
        return 1.0
    inside_mm3 = float(sitk.GetArrayViewFromImage(mask).sum()) * math.prod(mask.GetSpacing())
    fixed_mm3 = float(fixed.GetNumberOfPixels()) * math.prod(fixed.GetSpacing())
    return min(1.0, max(inside_mm3 / fixed_mm3, 1e-6))


def _evaluate_metric(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    mask: sitk.Image | None,
    settings: RigidSettings,
    threads: int | None,
) -> float:
    """Metric over every fixed voxel (inside the mask) at full resolution.

    SimpleITK's MetricEvaluate ignores the sampling settings and the pyramid,
    so before and after are dense, seed-free and directly comparable.
    """
    method = sitk.ImageRegistrationMethod()
    if threads is not None:
        method.SetNumberOfThreads(threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    if mask is not None:
        method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(sitk.Euler3DTransform(transform), inPlace=False)
    return float(method.MetricEvaluate(fixed, moving))


def _initial_transform(
    fixed: sitk.Image, moving: sitk.Image, init: RigidInit
) -> sitk.Euler3DTransform:
    if init is RigidInit.IDENTITY:
        transform = sitk.Euler3DTransform()
        transform.SetCenter(
            fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
        )
        return transform
    mode = (
        sitk.CenteredTransformInitializerFilter.MOMENTS
        if init is RigidInit.MOMENTS
        else sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    return sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode)
    )


def _as_float32(image: sitk.Image, label: str, what: str) -> sitk.Image:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise RegistrationError(f"{what}: {label} must be a 3-D scalar image; pass one volume")
    return sitk.Cast(image, sitk.sitkFloat32)


def _as_mask(mask: sitk.Image, what: str) -> sitk.Image:
    if mask.GetDimension() != 3:
        raise RegistrationError(f"{what}: the fixed mask must be 3-D, got {_describe(mask)}")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(binary).any():
        raise RegistrationError(f"{what}: the fixed mask is empty; check the brain extraction")
    return binary


def _itk_seed(seed: int) -> int:
    """SimpleITK reads seed 0 as "seed from the wall clock" (sitkWallClock), so shift by one."""
    return seed + 1


def _count(iterations: list[int]) -> None:
    iterations[0] += 1


def _describe(image: sitk.Image) -> str:
    size = "x".join(str(n) for n in image.GetSize())
    spacing = "x".join(f"{s:.2f}" for s in image.GetSpacing())
    return f"({size} voxels of {spacing} mm)"
