"""Is the Pixel Data element consistent with the image pixel module and the transfer syntax?

Why at receive time: the pipeline decodes pixels minutes later, when the sender
is gone. A native Pixel Data shorter or longer than Rows x Columns x Samples x
Frames x BitsAllocated, native bytes on a JPEG context, or an encapsulated
value without fragments would fail the job (or, worse, be decoded as another
image). These checks read only lengths and the first bytes of each frame's
first fragment: microseconds, no decoding.

Every reason names attributes and counts, never a value from the dataset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from segnode.node.receiving.encoded_dataset import PixelDataLayout

_JPEG_FAMILY = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
     JPEGLSNearLossless}
)  # fmt: skip
_J2K_FAMILY = frozenset({JPEG2000, JPEG2000Lossless, HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL})
_ALLOWED_BITS = frozenset({1, 8, 16, 32, 64})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "


class PixelModuleError(ValueError):
    """The pixel module and Pixel Data disagree; the message is the reason."""


def _positive_int(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    """An attribute as a positive integer; undecodable or out-of-range values are refused."""
    if keyword not in dataset:
        if default is not None:
            return default
        raise PixelModuleError(f"{keyword} is missing from an image with Pixel Data")
    try:
        value = dataset[keyword].value
        number = int(value) if value not in (None, "") else default
    except Exception as exc:  # noqa: BLE001 - any decoding failure refuses the instance
        raise PixelModuleError(f"{keyword} cannot be decoded ({type(exc).__name__})") from exc
    if number is None or number <= 0:
        raise PixelModuleError(f"{keyword} must be a positive integer")
    return number


def native_length(dataset: Dataset) -> int:
    """Bytes of native pixel data the image pixel module implies (before padding)."""
    rows = _positive_int(dataset, "Rows")
    columns = _positive_int(dataset, "Columns")
    samples = _positive_int(dataset, "SamplesPerPixel", 1)
    frames = _positive_int(dataset, "NumberOfFrames", 1)
    bits = _positive_int(dataset, "BitsAllocated")
    if bits not in _ALLOWED_BITS:
        raise PixelModuleError(f"BitsAllocated must be one of {sorted(_ALLOWED_BITS)}")
    return (rows * columns * samples * frames * bits + 7) // 8


def _frame_magic_check(transfer_syntax: UID) -> Callable[[bytes], bool] | None:
    if transfer_syntax in _JPEG_FAMILY:
        return lambda head: head[:2] == b"\xff\xd8"
    if transfer_syntax in _J2K_FAMILY:
        return lambda head: head[:2] == b"\xff\x4f" or head[:12] == _JP2_SIGNATURE
    if transfer_syntax == RLELossless:
        # PS3.5 G.5: a 64-byte header whose first UL is the number of segments (1..15).
        return lambda head: len(head) >= 64 and 1 <= struct.unpack_from("<L", head)[0] <= 15
    return None


def check_pixel_data(
    dataset: Dataset, layout: PixelDataLayout, body: bytes, transfer_syntax: UID
) -> None:
    """Raise :class:`PixelModuleError` when Pixel Data cannot be what the header says.

    Args:
        dataset: the parsed dataset (values read lazily; only the pixel module is read).
        layout: where the walk found the top-level pixel data element.
        body: the encoded dataset bytes the layout's offsets point into.
        transfer_syntax: the presentation context's transfer syntax.
    """
    if transfer_syntax.is_encapsulated:
        if layout.length is not None:
            raise PixelModuleError(
                "native (defined-length) Pixel Data on an encapsulated transfer syntax"
            )
        _check_encapsulated(dataset, layout, body, transfer_syntax)
        return
    if layout.length is None:
        raise PixelModuleError("encapsulated Pixel Data on a native transfer syntax")
    expected = native_length(dataset)
    padded = expected + (expected % 2)
    if layout.length != padded:
        raise PixelModuleError(
            f"Pixel Data holds {layout.length} bytes; the image pixel module implies {padded}"
        )


def _check_encapsulated(
    dataset: Dataset, layout: PixelDataLayout, body: bytes, transfer_syntax: UID
) -> None:
    frames = _positive_int(dataset, "NumberOfFrames", 1)
    native_length(dataset)  # the module must still be complete and positive
    if len(layout.fragments) < 2:
        raise PixelModuleError("encapsulated Pixel Data without a Basic Offset Table and fragment")
    (table_offset, table_length), *fragments = layout.fragments
    if table_length % 4:
        raise PixelModuleError("Basic Offset Table length is not a multiple of 4")
    if len(fragments) < frames:
        raise PixelModuleError(f"{len(fragments)} fragments for {frames} frames")
    if any(length == 0 for _, length in fragments):
        raise PixelModuleError("empty pixel data fragment")
    first_of_frame = [fragments[0]]
    if table_length:
        offsets = struct.unpack_from(f"<{table_length // 4}L", body, table_offset)
        if len(offsets) != frames:
            raise PixelModuleError(
                f"Basic Offset Table has {len(offsets)} entries for {frames} frames"
            )
        # Offsets count from the first fragment's item tag; map them to fragments.
        base = fragments[0][0] - 8
        by_position = {offset - 8 - base: (offset, length) for offset, length in fragments}
        try:
            first_of_frame = [by_position[position] for position in offsets]
        except KeyError as exc:
            raise PixelModuleError("Basic Offset Table points between fragments") from exc
    looks_right = _frame_magic_check(transfer_syntax)
    if looks_right is None:
        return
    for offset, length in first_of_frame:
        if not looks_right(body[offset : offset + min(length, 64)]):
            raise PixelModuleError(
                f"a frame does not start like {transfer_syntax.name} data"
            )
