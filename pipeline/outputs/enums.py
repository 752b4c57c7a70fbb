"""Coded values of the result objects, defined once.

Why enums and not strings: a misspelt region or label convention must fail where
it is written, not as a silently missing measurement in the SR.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Region(StrEnum):
    """The tumour regions the node reports (BraTS naming).

    NCR, ED and ET are the labels the network writes (disjoint); TC and WT are
    unions of them, as in the BraTS evaluation.
    """

    NCR = "NCR"
    """Necrotic (and non-enhancing) tumour core."""
    ED = "ED"
    """Peritumoural oedema (BraTS 2023: surrounding non-enhancing FLAIR hyperintensity)."""
    ET = "ET"
    """Enhancing tumour."""
    TC = "TC"
    """Tumour core: NCR + ET."""
    WT = "WT"
    """Whole tumour: NCR + ED + ET."""


#: Labelled regions (one label value each), in segment-number order.
BASE_REGIONS: tuple[Region, ...] = (Region.NCR, Region.ED, Region.ET)
#: Every reported region, in report order (largest first, as BraTS lists them).
ALL_REGIONS: tuple[Region, ...] = (Region.WT, Region.TC, Region.ET, Region.NCR, Region.ED)
#: Which labelled regions each reported region is the union of.
REGION_PARTS: dict[Region, tuple[Region, ...]] = {
    Region.NCR: (Region.NCR,),
    Region.ED: (Region.ED,),
    Region.ET: (Region.ET,),
    Region.TC: (Region.NCR, Region.ET),
    Region.WT: (Region.NCR, Region.ED, Region.ET),
}


class EnhancingTumourLabel(IntEnum):
    """The label value of ET, which is what tells the BraTS label conventions apart."""

    BRATS_2017 = 4
    """BraTS 2017-2021: 1 NCR/NET, 2 ED, 4 ET."""
    BRATS_2023 = 3
    """BraTS 2023 and later: 1 NCR, 2 SNFH (oedema), 3 ET."""


class SegmentAlgorithmType(StrEnum):
    """Defined terms of Segment Algorithm Type (0062,0008)."""

    AUTOMATIC = "AUTOMATIC"
    SEMIAUTOMATIC = "SEMIAUTOMATIC"
    MANUAL = "MANUAL"
