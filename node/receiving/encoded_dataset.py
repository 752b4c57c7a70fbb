"""Walking an encoded dataset's element structure without decoding any value.

Why our own walk: pydicom reads a dataset that ends in the middle of an
element as if the element were shorter (a truncated Pixel Data is simply
shorter), switches VR mode silently when the bytes do not match the transfer
syntax, and takes group 0002 elements inside a dataset as file meta. The C-STORE
contract needs the opposite: refuse, while the sender is listening, a dataset
that does not parse exactly to its last byte. This walk only reads tags and
lengths (a few thousand per instance, about a millisecond), descends into
sequences and encapsulated Pixel Data, and stops at the first inconsistency.

Rules, each a :class:`MalformedDatasetError` with the offset:

* every element ends inside the dataset and the top level ends exactly at its
  end; undefined-length sequences and items are closed by their delimiters;
* tags ascend strictly at each level (PS3.5 7.1), and no group 0000 (command)
  or 0002 (file meta) element appears in a dataset;
* explicit VR bytes hold a known VR (an implicit-VR stream on an explicit
  context, or the reverse, fails here on its first element);
* undefined length only where the standard allows it (SQ, UN, Pixel Data), and
  encapsulated Pixel Data is a sequence of items closed by a delimiter;
* at most :data:`MAX_ELEMENTS` elements: a few KiB that inflate to millions of
  empty elements must not cost seconds of CPU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from segnode.node.errors import NodeError

MAX_ELEMENTS = 200_000
MAX_DEPTH = 32
UNDEFINED_LENGTH = 0xFFFFFFFF

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
_PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD

_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_LENGTH_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip


class MalformedDatasetError(NodeError):
    """The encoded bytes are not a well-formed dataset in the declared transfer syntax."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at byte {offset} of the dataset)")
        self.reason = reason
        self.offset = offset


@dataclass(frozen=True, slots=True)
class PixelDataLayout:
    """Where the top-level pixel data element is and how it is encoded."""

    tag: int
    value_offset: int
    length: int | None
    """The value length, or None for an encapsulated (undefined-length) value."""
    fragments: tuple[tuple[int, int], ...] = ()
    """Encapsulated: ``(offset, length)`` of every item, the Basic Offset Table first."""


@dataclass(slots=True)
class DatasetLayout:
    """What the walk found: the top-level tags and the pixel data element."""

    top_level_tags: list[int] = field(default_factory=list)
    pixel_data: PixelDataLayout | None = None
    elements: int = 0


class _Walker:
    def __init__(self, data: bytes, implicit_vr: bool, little_endian: bool) -> None:
        self.data = data
        self.implicit_vr = implicit_vr
        self.endian = "<" if little_endian else ">"
        self.layout = DatasetLayout()
        # Precompiled: the walk runs a few thousand times per instance on the receive path.
        self._pair = struct.Struct(self.endian + "HH").unpack_from
        self._long = struct.Struct(self.endian + "L").unpack_from
        self._short = struct.Struct(self.endian + "H").unpack_from

    def _tag_at(self, offset: int) -> int:
        group, element = self._pair(self.data, offset)
        return int((group << 16) | element)

    def _u32(self, offset: int) -> int:
        return int(self._long(self.data, offset)[0])

    def _need(self, offset: int, size: int, end: int, what: str) -> None:
        if offset + size > end:
            raise MalformedDatasetError(
                f"{what} runs past the end: needs {size} bytes, {max(end - offset, 0)} remain",
                offset,
            )

    def walk_elements(self, offset: int, end: int, depth: int, *, in_item: bool) -> int:
        """Walk elements from ``offset``; returns where the walk stopped.

        In an undefined-length item (``end`` is the enclosing end) the walk stops
        after the Item Delimitation Item; otherwise exactly at ``end``.
        """
        if depth > MAX_DEPTH:
            raise MalformedDatasetError(f"sequences nested deeper than {MAX_DEPTH}", offset)
        previous = -1
        top = depth == 0
        while offset < end:
            self._need(offset, 8, end, "element header")
            tag = self._tag_at(offset)
            if tag == _ITEM_DELIMITER:
                if not in_item:
                    raise MalformedDatasetError("item delimiter outside an item", offset)
                return offset + 8
            if tag in (_ITEM, _SEQUENCE_DELIMITER):
                raise MalformedDatasetError(f"item tag {tag:08X} where an element belongs", offset)
            if tag <= previous:
                raise MalformedDatasetError(
                    f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) out of ascending order", offset
                )
            group = tag >> 16
            if group == 0x0000:
                raise MalformedDatasetError("command group 0000 element inside the dataset", offset)
            if group == 0x0002:
                raise MalformedDatasetError("file meta group 0002 element inside the dataset", offset)
            previous = tag
            self.layout.elements += 1
            if self.layout.elements > MAX_ELEMENTS:
                raise MalformedDatasetError(f"more than {MAX_ELEMENTS} elements", offset)
            if top:
                self.layout.top_level_tags.append(tag)
            offset = self._element(offset, end, tag, depth)
        if in_item:
            raise MalformedDatasetError("undefined-length item without a delimiter", offset)
        return offset

    def _element(self, offset: int, end: int, tag: int, depth: int) -> int:
        header_start = offset
        if self.implicit_vr:
            length = self._u32(offset + 4)
            vr = b"SQ" if length == UNDEFINED_LENGTH and tag not in PIXEL_DATA_TAGS else b""
            offset += 8
        else:
            vr = self.data[offset + 4 : offset + 6]
            if vr in _LONG_LENGTH_VRS:
                self._need(offset, 12, end, "element header")
                length = self._u32(offset + 8)
                offset += 12
            elif vr in _SHORT_LENGTH_VRS:
                length = int(self._short(self.data, offset + 6)[0])
                offset += 8
            else:
                raise MalformedDatasetError(
                    f"no valid VR for ({tag >> 16:04X},{tag & 0xFFFF:04X}): the bytes do not "
                    "match an explicit VR transfer syntax",
                    header_start,
                )
        if length == UNDEFINED_LENGTH:
            if tag == _PIXEL_DATA and depth == 0:
                return self._encapsulated_pixel_data(offset, end)
            if vr not in (b"SQ", b"UN", b""):
                raise MalformedDatasetError(
                    f"undefined length on a {vr.decode('ascii', 'replace')} element", header_start
                )
            return self._sequence_items(offset, end, depth, defined_end=None)
        self._need(offset, length, end, f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if depth == 0 and tag in PIXEL_DATA_TAGS:
            self.layout.pixel_data = PixelDataLayout(tag=tag, value_offset=offset, length=length)
        if vr == b"SQ" and length:
            self._sequence_items(offset, offset + length, depth, defined_end=offset + length)
        return offset + length

    def _sequence_items(self, offset: int, end: int, depth: int, defined_end: int | None) -> int:
        limit = defined_end if defined_end is not None else end
        while offset < limit:
            self._need(offset, 8, limit, "sequence item header")
            tag = self._tag_at(offset)
            length = self._u32(offset + 4)
            if tag == _SEQUENCE_DELIMITER:
                if defined_end is not None:
                    raise MalformedDatasetError("sequence delimiter in a defined-length sequence", offset)
                return offset + 8
            if tag != _ITEM:
                raise MalformedDatasetError(f"{tag:08X} where a sequence item belongs", offset)
            offset += 8
            if length == UNDEFINED_LENGTH:
                offset = self.walk_elements(offset, limit, depth + 1, in_item=True)
            else:
                self._need(offset, length, limit, "sequence item")
                self.walk_elements(offset, offset + length, depth + 1, in_item=False)
                offset += length
        if defined_end is None:
            raise MalformedDatasetError("undefined-length sequence without a delimiter", offset)
        return offset

    def _encapsulated_pixel_data(self, offset: int, end: int) -> int:
        start = offset
        fragments: list[tuple[int, int]] = []
        while True:
            self._need(offset, 8, end, "encapsulated pixel data item")
            tag = self._tag_at(offset)
            length = self._u32(offset + 4)
            if tag == _SEQUENCE_DELIMITER:
                offset += 8
                break
            if tag != _ITEM or length == UNDEFINED_LENGTH:
                raise MalformedDatasetError("encapsulated pixel data item expected", offset)
            self._need(offset + 8, length, end, "pixel data fragment")
            fragments.append((offset + 8, length))
            offset += 8 + length
        self.layout.pixel_data = PixelDataLayout(
            tag=_PIXEL_DATA, value_offset=start, length=None, fragments=tuple(fragments)
        )
        return offset


def walk_dataset(data: bytes, *, implicit_vr: bool, little_endian: bool) -> DatasetLayout:
    """Check that ``data`` is a well-formed dataset; return its layout.

    Raises:
        MalformedDatasetError: the first inconsistency, with its byte offset.
    """
    walker = _Walker(data, implicit_vr, little_endian)
    walker.walk_elements(0, len(data), 0, in_item=False)
    return walker.layout


def file_meta_end(file_bytes: bytes) -> int:
    """Offset of the dataset in a Part 10 stream: after preamble, "DICM" and group 0002.

    Group 0002 is always explicit VR little endian (PS3.10 7.1). Its File Meta
    Information Group Length, when present, says where it ends: group 0002
    elements after that are inside the dataset (and refused by the walk), not
    file meta.
    """
    if len(file_bytes) < 132 or file_bytes[128:132] != b"DICM":
        raise MalformedDatasetError("no DICM prefix", 128)
    walker = _Walker(file_bytes, implicit_vr=False, little_endian=True)
    offset = 132
    if (
        len(file_bytes) >= 144
        and walker._tag_at(offset) == 0x00020000
        and file_bytes[offset + 4 : offset + 8] == b"UL\x04\x00"
    ):
        end = offset + 12 + walker._u32(offset + 8)
        if end > len(file_bytes):
            raise MalformedDatasetError("file meta group length runs past the end", offset)
        return end
    while offset + 8 <= len(file_bytes) and walker._tag_at(offset) >> 16 == 0x0002:
        offset = walker._element(offset, len(file_bytes), walker._tag_at(offset), depth=1)
    return offset


def top_level_elements(
    data: bytes, *, implicit_vr: bool, little_endian: bool
) -> list[tuple[int, int, int]]:
    """``(tag, start, end)`` of every top-level element of a well-formed dataset.

    For tools and tests that edit encoded bytes element by element (the
    malformed-input tests build their variants from real files with it).
    """
    walker = _Walker(data, implicit_vr, little_endian)
    elements: list[tuple[int, int, int]] = []
    offset = 0
    while offset < len(data):
        tag = walker._tag_at(offset)
        end = walker._element(offset, len(data), tag, depth=0)
        elements.append((tag, offset, end))
        offset = end
    return elements
