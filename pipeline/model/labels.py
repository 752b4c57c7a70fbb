"""BraTS label maps and the nested regions the network predicts, converted both ways.

Labels (``segnode.vocabulary.LabelConvention``): 1 necrosis/non-enhancing core (NCR),
2 oedema (ED), ET 4 (BraTS 2018-2021) or 3 (BraTS 2023+). The network predicts the nested
regions WT = NCR ∪ ED ∪ ET, TC = NCR ∪ ET, ET with sigmoids (paper, section 3.1); labels come
back as ET, NCR = TC − ET, ED = WT − TC. Region arrays hold ``vocabulary.NESTED_REGIONS``
in order (WT, TC, ET).
"""

from __future__ import annotations

import numpy as np

from segnode.vocabulary import ED_LABEL, NCR_LABEL, LabelConvention


def detect_convention(labels: np.ndarray) -> LabelConvention:
    """Which convention a label map uses (4 present: 2021; 3 present: 2023)."""
    values = set(np.unique(labels).tolist())
    if 4 in values and 3 in values:
        raise ValueError("label map holds both 3 and 4: not a BraTS label map")
    if not values <= {0, 1, 2, 3, 4}:
        raise ValueError(f"unexpected label values {sorted(values - {0, 1, 2, 3, 4})}")
    return LabelConvention.BRATS_2023 if 3 in values else LabelConvention.BRATS_2021


def labels_to_regions(labels: np.ndarray, convention: LabelConvention | None = None) -> np.ndarray:
    """(3, ...) bool array in ``NESTED_REGIONS`` order (WT, TC, ET)."""
    convention = convention or detect_convention(labels)
    et = labels == convention.et_label
    tc = et | (labels == NCR_LABEL)
    wt = tc | (labels == ED_LABEL)
    return np.stack([wt, tc, et])


def regions_to_labels(
    regions: np.ndarray, convention: LabelConvention = LabelConvention.BRATS_2021
) -> np.ndarray:
    """Label map from (3, ...) binary regions in ``NESTED_REGIONS`` order; nesting is enforced
    (ET inside TC inside WT), as the paper's sigmoid outputs need not be nested."""
    wt = regions[0].astype(bool)
    tc = regions[1].astype(bool) & wt
    et = regions[2].astype(bool) & tc
    labels = np.zeros(wt.shape, dtype=np.uint8)
    labels[wt] = ED_LABEL
    labels[tc] = NCR_LABEL
    labels[et] = convention.et_label
    return labels


def convert_labels(labels: np.ndarray, to: LabelConvention) -> np.ndarray:
    """The same label map in another convention (only ET's value changes)."""
    return regions_to_labels(labels_to_regions(labels), to)
