"""Inference: region probabilities from one or more networks.

The network predicts the three nested regions (WT, TC, ET) with sigmoids (paper, section
3.1). ``predict_regions`` returns their probabilities in ``NESTED_REGIONS`` order, averaged over
the 8 axis flips when test-time augmentation is on (paper, section 4) and over the networks of
an ensemble; ``postprocess.postprocess`` turns them into a BraTS label map. Results
depend only on the inputs and the parameters, so the job record can store the parameters and
reproduce a result (``predict_regions`` does move the networks to the device and memory layout
it runs them in).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as functional
from monai.inferers.utils import sliding_window_inference

from segnode.pipeline.errors import InferenceError
from segnode.pipeline.model.agreement import PassAgreement
from segnode.pipeline.model.network import segmentation_logits
from segnode.pipeline.model.resolution import upsample
from segnode.vocabulary import NESTED_REGION_KEYS, NESTED_REGIONS

log = logging.getLogger(__name__)

PAD_MULTIPLE = 8
"""SegResNet halves the grid three times: every spatial size must divide by 2**3 (155 -> 160)."""

DEFAULT_WINDOW = (128, 128, 128)
"""Sliding-window size for volumes too large for one pass (the training crop's order of size)."""

MAX_FULL_VOLUME_VOXELS = 240 * 240 * 160
"""A padded BraTS grid in one pass: 9.8 s and 3.1 GB peak RSS (16 filters), 30 s and 5.6 GB
(32 filters) on 2 CPU threads with channels_last_3d, against 44 s / 107 s by 128^3 sliding
window at 0.5 overlap (measured 2026-11-21, segnode stack notes). Larger volumes use the window."""

SPATIAL_AXES = (2, 3, 4)
"""Spatial dimensions of a (batch, channel, x, y, z) tensor."""

FLIPS: tuple[tuple[int, ...], ...] = tuple(
    axes for count in range(4) for axes in itertools.combinations(SPATIAL_AXES, count)
)
"""The 8 axis-flip combinations of test-time augmentation, the identity first."""

_AMP_DTYPES = (torch.bfloat16, torch.float16)

Padding = tuple[tuple[int, int], ...]


def padding_for(shape: Sequence[int], multiple: int = PAD_MULTIPLE) -> Padding:
    """Zero padding (before, after) per spatial dimension up to the next multiple.

    Split evenly, the odd voxel after, so the brain stays centred as in training crops.
    """
    if multiple < 1:
        raise InferenceError(f"padding multiple must be >= 1, got {multiple}")
    padding = []
    for size in shape:
        total = -size % multiple
        padding.append((total // 2, total - total // 2))
    return tuple(padding)


def padded_shape(shape: Sequence[int], multiple: int = PAD_MULTIPLE) -> tuple[int, ...]:
    """Spatial shape after ``padding_for``."""
    return tuple(
        size + before + after
        for size, (before, after) in zip(shape, padding_for(shape, multiple), strict=True)
    )


def _pad(batch: torch.Tensor, padding: Padding) -> torch.Tensor:
    # F.pad lists the last dimension first.
    flat = [amount for pair in reversed(padding) for amount in pair]
    return functional.pad(batch, flat) if any(flat) else batch


def _crop(batch: torch.Tensor, padding: Padding) -> torch.Tensor:
    index = [slice(None), slice(None)]
    index += [
        slice(before, size - after)
        for (before, after), size in zip(padding, batch.shape[2:], strict=True)
    ]
    return batch[tuple(index)]


def region_order(output_channels: Sequence[str]) -> list[int]:
    """Index of each of ``NESTED_REGIONS`` among a model's output channels.

    A site bundle may emit (TC, WT, ET) where our own models emit (WT, TC, ET); the manifest
    says which, and everything downstream sees ``NESTED_REGIONS`` order.
    """
    if sorted(output_channels) != sorted(NESTED_REGION_KEYS):
        raise InferenceError(
            f"output_channels must be a permutation of {NESTED_REGION_KEYS}, got "
            f"{tuple(output_channels)}: fix the model's manifest"
        )
    return [list(output_channels).index(key) for key in NESTED_REGION_KEYS]


def choose_roi(
    shape: Sequence[int],
    *,
    max_full_volume_voxels: int = MAX_FULL_VOLUME_VOXELS,
    window: tuple[int, int, int] = DEFAULT_WINDOW,
) -> tuple[int, int, int] | None:
    """Sliding-window size for a volume, or None to run it in one pass.

    One pass is 3.5-4.5 times faster than a 50 %-overlap window on CPU, and every BraTS-grid
    case (240x240x155, padded to 160) fits: so the full volume is used up to
    ``max_full_volume_voxels`` padded voxels. The limit is in effect a memory budget (peak
    memory grows with the voxel count); a site with less memory, or a larger network, lowers it.

    Args:
        shape: spatial shape (x, y, z) in voxels, before padding.
        max_full_volume_voxels: largest padded volume run in one pass.
        window: window used above the limit; each size a multiple of 8.
    """
    _check_roi(window)
    if max_full_volume_voxels < 1:
        raise InferenceError(
            f"max_full_volume_voxels must be positive, got {max_full_volume_voxels}"
        )
    if math.prod(padded_shape(shape)) <= max_full_volume_voxels:
        return None
    return window


def _check_roi(roi_size: Sequence[int]) -> None:
    if len(roi_size) != 3 or any(size < PAD_MULTIPLE or size % PAD_MULTIPLE for size in roi_size):
        raise InferenceError(
            f"window size must be 3 positive multiples of {PAD_MULTIPLE}, got {tuple(roi_size)}"
        )


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 4 or min(image.shape) < 1:
        raise InferenceError(f"image must be (channels, x, y, z), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise InferenceError(f"image must be floating point (normalised), got {image.dtype}")
    if not np.isfinite(image).all():
        raise InferenceError("image holds NaN or infinite values: check the normalisation")


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> AbstractContextManager[None]:
    """Mixed precision on CUDA only: without bf16 hardware it is ~2x slower on CPU."""
    if amp_dtype is None:
        return nullcontext()
    if amp_dtype not in _AMP_DTYPES:
        raise InferenceError(f"amp_dtype must be bfloat16, float16 or None, got {amp_dtype}")
    if device.type != "cuda":
        log.info("autocast requested on %s: ignored, running in float32", device.type)
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


@contextmanager
def _eval_mode(networks: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Eval mode for the call (dropout off, GroupNorm has no running state), then restored."""
    modes = [network.training for network in networks]
    try:
        for network in networks:
            network.eval()
        yield
    finally:
        for network, training in zip(networks, modes, strict=True):
            network.train(training)


def _probabilities(
    network: torch.nn.Module,
    batch: torch.Tensor,
    *,
    roi_size: tuple[int, int, int] | None,
    overlap: float,
    sw_batch_size: int,
    memory_format: torch.memory_format,
) -> torch.Tensor:
    def predictor(window: torch.Tensor) -> torch.Tensor:
        logits = segmentation_logits(network, window.contiguous(memory_format=memory_format))
        return torch.sigmoid(logits.float())

    if roi_size is None:
        return predictor(batch)
    # Windows blend probabilities (not logits) with Gaussian weights, so seams between
    # windows do not show, and the average is of the same quantity as the TTA average.
    blended = sliding_window_inference(
        batch, roi_size, sw_batch_size, predictor, overlap=overlap, mode="gaussian"
    )
    if not isinstance(blended, torch.Tensor):
        raise InferenceError(f"sliding window returned {type(blended).__name__}, not a tensor")
    return blended


MAX_FLIP_BATCH_VOXELS = 8 * 128**3
"""TTA flips run as one batch while (flips × voxels) stays under this (about 2 GB of
activations for an 8-filter SegResNet). Why batch: PyTorch sends a batch-1 3D convolution with
a small input to its slow native kernel instead of oneDNN; a 2 mm brain box (80×96×80) is such an
input, and 8 flips in one batch run ~2-3x faster than 8 single passes on 2 CPU threads."""


def _flip_group(batch: torch.Tensor, roi_size: tuple[int, int, int] | None, flips: int) -> int:
    """How many flipped copies go through the network at once (1 for sliding windows)."""
    if roi_size is not None:
        return 1
    voxels = math.prod(int(size) for size in batch.shape[2:])
    return max(1, min(flips, MAX_FLIP_BATCH_VOXELS // max(voxels, 1)))


def predict_regions(
    networks: Sequence[torch.nn.Module],
    image: np.ndarray,
    *,
    output_channels: tuple[str, ...],
    tta: bool,
    roi_size: tuple[int, int, int] | None,
    overlap: float = 0.5,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    sw_batch_size: int = 1,
    spacing_factor: int = 1,
    agreement: PassAgreement | None = None,
) -> np.ndarray:
    """Probabilities of WT, TC and ET for one normalised multi-channel volume.

    Each spatial size is zero-padded to a multiple of 8 (zero is the normalised background)
    and cropped back. With ``tta`` the result is the mean of the sigmoid outputs over the 8
    axis-flip combinations, each flipped back (paper, section 4); an ensemble is the mean over
    ``networks``. The networks are moved to ``device`` (and to channels_last_3d on CPU, 25-35 %
    faster there) and run in eval mode under ``torch.inference_mode``; their train/eval flags
    are restored afterwards.

    Args:
        networks: one network, or several to ensemble; all with the same output channels.
        image: (channels, x, y, z), channels in the manifest's input order, normalised.
        output_channels: meaning of the networks' output channels (the manifest's).
        tta: average over the 8 flips (8 forward passes per network).
        roi_size: sliding-window size (multiples of 8), or None for one pass (``choose_roi``).
        overlap: sliding-window overlap, in [0, 1).
        device: where to run.
        amp_dtype: bfloat16 or float16 autocast on CUDA; ignored on CPU, where it is slower.
        sw_batch_size: windows per forward pass.
        spacing_factor: the model's grid spacing over the image's (2 for a 2 mm model on the
            1 mm grid): the padded image is block-averaged by this factor before the network
            and the probabilities are interpolated back (``segnode.pipeline.model.resolution``);
            ``roi_size`` is then on the model's grid.
        agreement: if given, every pass (each flip of each network, flipped back) is added
            to it, on the model's (padded) grid (``segnode.pipeline.model.agreement``).

    Returns:
        float32 array (3, x, y, z) of probabilities in ``NESTED_REGIONS`` order (WT, TC, ET).

    Raises:
        InferenceError: no network, a malformed image, window or channel list.
    """
    if not networks:
        raise InferenceError("no network given")
    _check_image(image)
    order = region_order(output_channels)
    if roi_size is not None:
        _check_roi(roi_size)
    if not 0.0 <= overlap < 1.0:
        raise InferenceError(f"overlap must be in [0, 1), got {overlap}")

    if spacing_factor < 1:
        raise InferenceError(f"spacing_factor must be >= 1, got {spacing_factor}")
    padding = padding_for(image.shape[1:], PAD_MULTIPLE * spacing_factor)
    memory_format = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    batch = _pad(batch, padding)
    fine_shape = (int(batch.shape[2]), int(batch.shape[3]), int(batch.shape[4]))
    if spacing_factor > 1:
        # Equal to resolution.block_mean on this padded grid (every axis divides).
        batch = functional.avg_pool3d(batch, spacing_factor)
    batch = batch.contiguous(memory_format=memory_format)
    flips = FLIPS if tta else ((),)

    total = torch.zeros(
        (1, len(NESTED_REGIONS), *batch.shape[2:]), dtype=torch.float32, device=device
    )
    with torch.inference_mode(), _eval_mode(networks), _autocast(device, amp_dtype):
        for network in networks:
            # torch's stubs omit Module.to(memory_format=...), which exists and is documented.
            network.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]
            group = _flip_group(batch, roi_size, len(flips))
            for start in range(0, len(flips), group):
                chosen = flips[start : start + group]
                flipped = torch.cat(
                    [torch.flip(batch, axes) if axes else batch for axes in chosen]
                ).contiguous(memory_format=memory_format)
                probabilities = _probabilities(
                    network,
                    flipped,
                    roi_size=roi_size,
                    overlap=overlap,
                    sw_batch_size=sw_batch_size,
                    memory_format=memory_format,
                )
                if probabilities.shape[1] != len(NESTED_REGIONS):
                    raise InferenceError(
                        f"network gives {probabilities.shape[1]} output channels, "
                        f"the manifest names {len(NESTED_REGIONS)}"
                    )
                for index, axes in enumerate(chosen):
                    one = probabilities[index : index + 1]
                    restored = torch.flip(one, axes) if axes else one
                    total += restored
                    if agreement is not None:
                        agreement.add(restored)
    mean = total / (len(networks) * len(flips))
    mean = _crop(upsample(mean, spacing_factor, fine_shape), padding)[0, order]
    result: np.ndarray = mean.cpu().numpy().astype(np.float32, copy=False)
    return result
