"""The domain's words, defined once: sequence roles, tumour regions, label conventions, outputs.

Why one module at the bottom of the import graph: the receiving side, the pipeline, the
model code, the result writers and the configuration all speak of "the T1c", "the enhancing
tumour", "BraTS 2023 labels" and "an SR". When each kept its own spelling (four tuples of
roles, two classes called ``LabelConvention``, upper- and lower-case region names) a change
was a hunt and a mismatch failed far from where it was written. Here every name is an enum
or a typed literal, so a misspelling fails where it is typed. This module imports nothing
from segnode (import-linter keeps it in the lowest layer with ``segnode.files``).

Label values follow BraTS: 1 necrotic/non-enhancing core (NCR), 2 oedema (ED), and the
enhancing tumour (ET) as 4 (BraTS 2017-2021) or 3 (BraTS 2023 and later). The network
predicts the nested regions WT = NCR ∪ ED ∪ ET, TC = NCR ∪ ET and ET (Myronenko 2018,
section 3.1).
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Literal, get_args


class Role(StrEnum):
    """What a series is to the segmentation: one of the four structural MR sequences."""

    T1 = "t1"
    """Native (pre-contrast) T1-weighted."""
    T1C = "t1c"
    """T1-weighted after gadolinium."""
    T2 = "t2"
    """T2-weighted."""
    FLAIR = "flair"
    """T2-weighted fluid-attenuated inversion recovery."""


#: The order of the network's input channels for segnode's own models (BraTS order). A
#: third-party model states its own order in its manifest's ``input_channels``.
CHANNEL_ORDER: tuple[Role, ...] = (Role.T1, Role.T1C, Role.T2, Role.FLAIR)


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

    @property
    def key(self) -> str:
        """Lower-case spelling (``"wt"``) used where files name the region: model manifests'
        ``output_channels``, metric keys (``val_dice_wt``) and evaluation reports."""
        return self.value.lower()


#: Labelled regions (one label value each), in segment-number order.
BASE_REGIONS: tuple[Region, ...] = (Region.NCR, Region.ED, Region.ET)
#: Every reported region, in report order (largest first, as BraTS lists them).
ALL_REGIONS: tuple[Region, ...] = (Region.WT, Region.TC, Region.ET, Region.NCR, Region.ED)
#: The nested regions the network predicts (one sigmoid each), in the order segnode's
#: own models emit them and every array of region probabilities or masks holds them.
NESTED_REGIONS: tuple[Region, ...] = (Region.WT, Region.TC, Region.ET)
#: The nested regions as files spell them (``Region.key``): manifests' ``output_channels``,
#: metric and report keys.
NESTED_REGION_KEYS: tuple[str, ...] = tuple(region.key for region in NESTED_REGIONS)
#: Which labelled regions each reported region is the union of.
REGION_PARTS: MappingProxyType[Region, tuple[Region, ...]] = MappingProxyType(
    {
        Region.NCR: (Region.NCR,),
        Region.ED: (Region.ED,),
        Region.ET: (Region.ET,),
        Region.TC: (Region.NCR, Region.ET),
        Region.WT: (Region.NCR, Region.ED, Region.ET),
    }
)

NCR_LABEL = 1
"""Label value of the necrotic core, in every BraTS convention."""
ED_LABEL = 2
"""Label value of the oedema, in every BraTS convention."""


class LabelConvention(StrEnum):
    """Which label value means which region; only the enhancing tumour's value differs.

    The values are what ``segnode predict --labels`` takes and what a job's
    ``inference/record.json`` stores (``"label_convention": "2021"``).
    """

    BRATS_2021 = "2021"
    """BraTS 2017-2021: 1 NCR/NET, 2 ED, 4 ET."""
    BRATS_2023 = "2023"
    """BraTS 2023 and later: 1 NCR, 2 SNFH (oedema), 3 ET."""

    @property
    def et_label(self) -> int:
        """Label value of the enhancing tumour (4 or 3)."""
        return 4 if self is LabelConvention.BRATS_2021 else 3

    @property
    def labels(self) -> dict[Region, int]:
        """Label value of each labelled region (:data:`BASE_REGIONS`)."""
        return {Region.NCR: NCR_LABEL, Region.ED: ED_LABEL, Region.ET: self.et_label}

    @classmethod
    def with_et_label(cls, et_label: int) -> LabelConvention:
        """The convention whose ET label is ``et_label``.

        Raises:
            ValueError: for anything but 4 or 3 (callers turn it into their own error).
        """
        for convention in cls:
            if convention.et_label == et_label:
                return convention
        raise ValueError(
            f"ET label {et_label!r} is neither 4 (BraTS 2017-2021) nor 3 (BraTS 2023+)"
        )


OutputKind = Literal["seg", "sr", "sc", "pdf"]
"""A result object a job can write: DICOM-SEG, TID 1500 SR, secondary capture, encapsulated PDF."""
#: Every kind, in the order results are written and listed.
OUTPUT_KINDS: tuple[OutputKind, ...] = get_args(OutputKind)
