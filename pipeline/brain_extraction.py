"""Brain extraction with deepbet, in memory, on the input image's own grid.

Why deepbet: its TorchScript weights ship inside the wheel (``deepbet==1.0.2``),
so a hospital node never downloads anything, and one head takes a few seconds
on two CPU cores.

Why the NATIVE grid and not a 1 mm resampling first. deepbet was trained on
~1 mm T1, but it ignores voxel spacing: it crops a bounding box and resizes the
voxel array to 256x256x256 itself (nearest-exact), so resampling to 1 mm first
only changes how the thick slices are interpolated. Measured (2 shared CPU
cores, torch 2.13, threshold 0.5):

* TCGA-FG-6692 native T1c (0.9x0.9x5.5 mm, 26 slices): native grid 1554 ml,
  1 mm linear + nearest back 1559 ml, Dice between them 0.988. The SRI24
  skull-stripped T1c of the same patient has 1602 ml of brain; registered
  rigidly onto the native grid (1593 ml) it gives Dice 0.968 with the native
  route and 0.965 with the 1 mm route. Native T1: 1586 vs 1589 ml.
* A 1 mm Philips MPRAGE resliced to 0.9x0.9 mm axial slabs of 3 to 8 mm (some
  tilted by 5-10 degrees), Dice against the mask of the 1 mm original:
  native 0.983-0.990, 1 mm route 0.980-0.988; volumes within 2.5% either way.
* Time per extraction on the TCGA T1c (median of 4, noisy shared machine):
  native 6.8 s (best 2.0 s), 1 mm route 7.4 s (best 5.2 s).

So the 1 mm detour buys nothing measurable, costs time and a second
interpolation (a nearest-neighbour lookup of a 1 mm mask at 5.5 mm slice
centres), and the native route computes the mask on the very grid it returns.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
import torch
from deepbet.bet import BrainExtraction  # type: ignore[import-untyped]

from segnode.pipeline.errors import BrainExtractionError
from segnode.pipeline.model.device import select_device

log = logging.getLogger(__name__)

TOOL = f"deepbet {version('deepbet')}"
MIN_BRAIN_ML = 500.0
"""Below this the mask is a fragment (or the series is not a head); adult brains are ~1.1-1.9 l."""
MAX_BRAIN_ML = 2500.0
"""Above this the mask has leaked into scalp or neck."""

# LPS (DICOM, SimpleITK) and RAS (NIfTI, nibabel) differ by the sign of x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# deepbet keeps per-call state (the bounding box) on the model object, and
# torch's thread count is process-wide: one extraction at a time per process.
_RUN_LOCK = threading.Lock()


@dataclass(frozen=True)
class BrainMask:
    """A brain mask on the input image's grid, with what is needed to reproduce it."""

    mask: sitk.Image
    """uint8, 0 outside and 1 inside, same size/origin/spacing/direction as the input."""
    volume_ml: float
    seconds: float
    """Wall time of the call, including the model load on a process's first call."""
    tool: str
    threshold: float
    dilate_voxels: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mask.GetPixelID() != sitk.sitkUInt8 or self.mask.GetDimension() != 3:
            raise BrainExtractionError(
                f"brain mask must be a 3-D uint8 image, got {self.mask.GetDimension()}-D "
                f"{self.mask.GetPixelIDTypeAsString()}"
            )

    def as_record(self) -> dict[str, object]:
        """JSON-friendly provenance for the job record (the image itself is left out)."""
        return {
            "step": "brain_extraction",
            "tool": self.tool,
            "threshold": self.threshold,
            "dilate_voxels": self.dilate_voxels,
            "device": self.device,
            "working_grid": "native",
            "volume_ml": self.volume_ml,
            "seconds": self.seconds,
        }


def ras_affine(image: sitk.Image) -> npt.NDArray[np.float64]:
    """The NIfTI (RAS) voxel-to-world affine of a SimpleITK (LPS) image, in mm."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ affine


def to_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """The same voxels as an in-memory float32 NIfTI image (no file is written).

    SimpleITK arrays are indexed [z, y, x] and nibabel's [i, j, k], hence the transpose.
    """
    voxels = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0)
    return nib.Nifti1Image(voxels, ras_affine(image))


def from_nifti_mask(mask: nib.Nifti1Image) -> sitk.Image:
    """A NIfTI mask as a uint8 0/1 SimpleITK image on the grid its own affine describes."""
    affine = _LPS_TO_RAS @ np.asarray(mask.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    voxels = (np.asanyarray(mask.dataobj) > 0).astype(np.uint8).transpose(2, 1, 0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).flatten().tolist())
    return image


def mask_onto_grid(mask: nib.Nifti1Image, reference: sitk.Image) -> sitk.Image:
    """Map deepbet's mask onto the reference grid by geometry, not by trust.

    deepbet 1.0.2 reorients to RAS internally and back again, so the grids
    normally coincide and the nearest-neighbour lookup is an exact copy; if a
    future version returned the canonical orientation, this still lands each
    voxel where it belongs.
    """
    resampled = sitk.Resample(
        from_nifti_mask(mask),
        reference,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    # Resample already uses the reference grid; copy it so float noise cannot differ.
    resampled.CopyInformation(reference)
    return resampled


def volume_ml(mask: sitk.Image) -> float:
    """Mask volume in ml: voxel count times the voxel volume (mm^3 / 1000)."""
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return voxels * float(np.prod(mask.GetSpacing())) / 1000.0


def check_plausible_volume(volume: float) -> None:
    """Refuse masks that cannot be a brain, naming the measured volume.

    Raises:
        BrainExtractionError: the mask is empty or outside MIN_BRAIN_ML..MAX_BRAIN_ML.
    """
    if volume <= 0.0:
        raise BrainExtractionError(
            "brain extraction produced an empty mask; check that the series is a head T1/T1c"
        )
    if not MIN_BRAIN_ML <= volume <= MAX_BRAIN_ML:
        raise BrainExtractionError(
            f"brain mask volume {volume:.0f} ml is implausible (expected {MIN_BRAIN_ML:.0f}-"
            f"{MAX_BRAIN_ML:.0f} ml); check the series (head T1/T1c, whole brain in the field of view)"
        )


@functools.lru_cache(maxsize=2)
def load_brain_extractor(device: str = "cpu") -> Any:
    """deepbet's two TorchScript models, loaded once per process and device.

    Loading and the first (profiling) call of a TorchScript model cost seconds,
    so workers keep the object; call this at start-up to warm it.
    """
    extractor = BrainExtraction(no_gpu=True)
    # deepbet picks its own device at import (MPS, CUDA); ours is explicit.
    extractor.model = extractor.model.to(torch.device(device))
    extractor.bbox_model = extractor.bbox_model.to(torch.device(device))
    return extractor


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Use num_threads for the duration, restoring torch's process-wide setting afterwards."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_arguments(
    image: sitk.Image, threshold: float, dilate_voxels: int, num_threads: int | None
) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise BrainExtractionError(
            f"brain extraction needs a 3-D scalar image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    if not 0.0 < threshold < 1.0:
        raise BrainExtractionError(f"threshold must lie in (0, 1), got {threshold}")
    # Ten layers is already 5.5 cm on thick slices: beyond that it is not a brain mask.
    if abs(dilate_voxels) > 10:
        raise BrainExtractionError(f"dilate_voxels must lie in -10..10, got {dilate_voxels}")
    if num_threads is not None and num_threads < 1:
        raise BrainExtractionError(f"num_threads must be at least 1, got {num_threads}")


def extract_brain(
    image: sitk.Image,
    *,
    threshold: float = 0.5,
    dilate_voxels: int = 0,
    device: str = "cpu",
    num_threads: int | None = None,
) -> BrainMask:
    """Brain mask of an unregistered head T1 or T1c, on the input's own grid.

    Args:
        image: 3-D scalar head MRI in LPS physical space, any orientation and spacing.
        threshold: probability above which a voxel is brain (deepbet's default 0.5).
        dilate_voxels: grow (positive) or shrink (negative) the mask by this many
            voxel layers of the input grid; on 5.5 mm slices one layer is 5.5 mm in z.
        device: where deepbet runs, by the node's device policy
            (``segnode.pipeline.model.device``: ``auto`` takes CUDA when present, ``cuda``
            insists on it); recorded in the result. The node's preprocessing runs it on the
            CPU, where one head takes seconds and the mask does not depend on a GPU.
        num_threads: torch CPU threads for this call (restored afterwards);
            None keeps torch's own setting. The mask does not depend on it.

    Returns:
        The uint8 0/1 mask, its volume in ml, the time taken and the parameters.

    Raises:
        BrainExtractionError: bad arguments, a constant image, a deepbet failure,
            or an empty or implausible mask (the message names the volume).
        DeviceError: ``device`` is unknown or not available here.
    """
    _check_arguments(image, threshold, dilate_voxels, num_threads)
    started = time.perf_counter()
    nifti = to_nifti(image)
    voxels = np.asarray(nifti.dataobj)
    if not np.isfinite(voxels).any() or np.nanmin(voxels) == np.nanmax(voxels):
        raise BrainExtractionError(
            f"image of size {image.GetSize()} is constant; there is no head to extract a brain from"
        )
    on = str(select_device(device))
    with _RUN_LOCK, _torch_threads(num_threads):
        extractor = load_brain_extractor(on)
        try:
            _, mask_nifti, _ = extractor.run(nifti, threshold=threshold, n_dilate=dilate_voxels)
        # deepbet signals "no head found" with assert and numpy/torch errors.
        except (AssertionError, ValueError, IndexError, RuntimeError) as exc:
            raise BrainExtractionError(
                f"deepbet failed on an image of size {image.GetSize()}: {exc}; "
                "check that the series is a head T1/T1c"
            ) from exc
    mask = mask_onto_grid(mask_nifti, image)
    volume = volume_ml(mask)
    check_plausible_volume(volume)
    seconds = time.perf_counter() - started
    log.info(
        "brain extracted",
        extra={
            "stage": "brain_extraction",
            "volume_ml": round(volume, 1),
            "seconds": round(seconds, 2),
        },
    )
    return BrainMask(
        mask=mask,
        volume_ml=volume,
        seconds=seconds,
        tool=TOOL,
        threshold=threshold,
        dilate_voxels=dilate_voxels,
        device=on,
    )


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0.0, atol=1e-4)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6, atol=0.0)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=1e-6)
    )


def apply_mask(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """The image with every voxel outside the mask set to 0, on the same grid and pixel type.

    Raises:
        BrainExtractionError: the mask is not on the image's grid (resample it first).
    """
    if not same_grid(image, mask):
        raise BrainExtractionError(
            f"mask grid (size {mask.GetSize()}, spacing {mask.GetSpacing()}) does not match the "
            f"image grid (size {image.GetSize()}, spacing {image.GetSpacing()}); resample the mask "
            "onto the image with nearest neighbour first"
        )
    inside = sitk.Cast(mask != 0, sitk.sitkUInt8)
    inside.CopyInformation(image)
    return sitk.Mask(image, inside, outsideValue=0, maskingValue=0)
