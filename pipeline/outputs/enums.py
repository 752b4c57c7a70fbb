"""Coded values of the result objects, defined once.

Why enums and not strings: a misspelt coded value must fail where it is written, not as
a silently invalid attribute in the SEG. The domain's own words (regions, label
conventions, output kinds) are in ``segnode.vocabulary``, shared with the model code.
"""

from __future__ import annotations

from enum import StrEnum


class SegmentAlgorithmType(StrEnum):
    """Defined terms of Segment Algorithm Type (0062,0008)."""

    AUTOMATIC = "AUTOMATIC"
    SEMIAUTOMATIC = "SEMIAUTOMATIC"
    MANUAL = "MANUAL"
