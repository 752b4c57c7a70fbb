"""Post-processing: region probabilities into a BraTS label map, and what it changed.

Why apart from ``inference``: the network's arithmetic (padding, windows, TTA, ensembles) and
the label rules (thresholds, nesting, small components, small ET) change for different reasons,
and the rules are tuned on cross-validation folds (``training.cross_validation``) without
running a network. ``resolve_postprocessing`` is the one place where a site's ``[model]``
values, a model's tuned values (``manifest.postprocessing``) and the untuned defaults
(``manifest.PostprocessingSpec``) meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from segnode.pipeline.errors import InferenceError
from segnode.pipeline.model.labels import regions_to_labels
from segnode.pipeline.model.manifest import PostprocessingSpec
from segnode.vocabulary import ED_LABEL, NCR_LABEL, NESTED_REGIONS, LabelConvention


@dataclass(frozen=True, slots=True)
class PostprocessRecord:
    """What ``postprocess`` did, for the job's provenance record."""

    threshold: float
    et_threshold: float
    et_min_voxels: int | None
    min_component_voxels: int | None
    convention: LabelConvention
    components_removed: int
    """Connected whole-tumour components smaller than ``min_component_voxels``, removed."""
    component_voxels_removed: int
    et_voxels_found: int
    """ET voxels after component removal, before the small-ET rule."""
    et_relabelled_as_ncr: bool
    voxel_counts: Mapping[str, int] = field(default_factory=dict)
    """Final voxels per label name (ncr, ed, et)."""

    def as_dict(self) -> dict[str, object]:
        record = asdict(self)
        record["convention"] = self.convention.value
        record["voxel_counts"] = dict(self.voxel_counts)
        return record


_UNTUNED = PostprocessingSpec()
"""The post-processing of a model whose manifest tunes none (``PostprocessingSpec``'s defaults)."""


def resolve_postprocessing(
    tuned: PostprocessingSpec | None,
    *,
    threshold: float | None = None,
    et_threshold: float | None = None,
    et_min_voxels: int | None = None,
    min_component_voxels: int | None = None,
) -> PostprocessingSpec:
    """The post-processing to apply: a value given here (a site's ``[model]`` setting or a
    command-line option; 0 turns a rule off) wins over the model's tuned value
    (``manifest.postprocessing``, chosen on its CV folds), which wins over the defaults of
    ``PostprocessingSpec``. The one place where these three meet."""
    base = tuned or _UNTUNED
    overrides: dict[str, float | int] = {}
    if threshold is not None:
        overrides["threshold"] = threshold
    if et_threshold is not None:
        overrides["et_threshold"] = et_threshold
    if et_min_voxels is not None:
        overrides["et_min_voxels"] = et_min_voxels
    if min_component_voxels is not None:
        overrides["min_component_voxels"] = min_component_voxels
    if not overrides:
        return base
    return PostprocessingSpec.model_validate(
        {**base.model_dump(), **overrides, "tuned_on": base.tuned_on + " (overridden)"}
    )


def postprocess_with(
    regions_probability: np.ndarray,
    spec: PostprocessingSpec,
    convention: LabelConvention = LabelConvention.BRATS_2021,
) -> tuple[np.ndarray, PostprocessRecord]:
    """``postprocess`` with the values of a spec (``resolve_postprocessing``'s answer); a rule
    set to 0 in the spec is off."""
    return postprocess(
        regions_probability,
        threshold=spec.threshold,
        et_threshold=spec.et_threshold,
        et_min_voxels=spec.et_min_voxels or None,
        min_component_voxels=spec.min_component_voxels or None,
        convention=convention,
    )


def _remove_small_components(labels: np.ndarray, min_voxels: int) -> tuple[int, int]:
    """Zero whole-tumour components below ``min_voxels``; returns (components, voxels) removed.

    26-connectivity: diagonally touching voxels are one lesion, so a ragged tumour margin is not
    cut into removable pieces.
    """
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return 0, 0
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False
    remove = small[components]
    labels[remove] = 0
    return int(small.sum()), int(remove.sum())


def postprocess(
    regions_probability: np.ndarray,
    *,
    threshold: float = _UNTUNED.threshold,
    et_threshold: float | None = _UNTUNED.et_threshold,
    et_min_voxels: int | None = _UNTUNED.et_min_voxels,
    min_component_voxels: int | None = _UNTUNED.min_component_voxels,
    convention: LabelConvention = LabelConvention.BRATS_2021,
) -> tuple[np.ndarray, PostprocessRecord]:
    """Label map from region probabilities, with the two usual BraTS corrections.

    Steps: threshold each region (probability >= ``threshold``); nest them into labels
    (``regions_to_labels``: ET inside TC inside WT); remove connected components of the whole
    tumour smaller than ``min_component_voxels`` (isolated false positives); then, if fewer than
    ``et_min_voxels`` ET voxels remain, relabel them NCR. The last rule exists because BraTS
    scores an ET predicted in a case without ET as Dice 0 / HD95 373 mm, and low-grade cases
    often have none; BraTS 2021's top teams used thresholds of 200-750 voxels. Components go
    first so that stray specks do not count towards the ET volume.

    Args:
        regions_probability: (3, x, y, z) probabilities in ``NESTED_REGIONS`` order.
        threshold: probability at which a voxel belongs to WT and TC (and ET, unless
            ``et_threshold`` says otherwise).
        et_threshold: probability at which a TC voxel is enhancing; None: ``threshold``. A
            separate value is how the ET/necrosis boundary is tuned on the CV folds (a model
            that paints the core enhancing needs a higher one).
        et_min_voxels: smallest ET kept as ET; None disables the rule.
        min_component_voxels: smallest whole-tumour component kept; None disables removal.
        convention: label values to write (ET = 4 for 2021, 3 for 2023).

    Returns:
        uint8 label map (x, y, z) and the record of what changed.
    """
    if regions_probability.ndim != 4 or regions_probability.shape[0] != len(NESTED_REGIONS):
        raise InferenceError(
            f"region probabilities must be (3, x, y, z), got shape {regions_probability.shape}"
        )
    et_threshold = threshold if et_threshold is None else et_threshold
    for name, cut in (("threshold", threshold), ("et_threshold", et_threshold)):
        if not 0.0 < cut < 1.0:
            raise InferenceError(f"{name} must be in (0, 1), got {cut}")
    for name, floor in (
        ("et_min_voxels", et_min_voxels),
        ("min_component_voxels", min_component_voxels),
    ):
        if floor is not None and floor < 0:
            raise InferenceError(f"{name} must be >= 0 or None, got {floor}")

    regions = regions_probability >= threshold
    regions[2] = regions_probability[2] >= et_threshold
    labels = regions_to_labels(regions, convention)
    components_removed = voxels_removed = 0
    if min_component_voxels:
        components_removed, voxels_removed = _remove_small_components(labels, min_component_voxels)

    enhancing = labels == convention.et_label
    et_voxels = int(enhancing.sum())
    relabel = et_min_voxels is not None and 0 < et_voxels < et_min_voxels
    if relabel:
        labels[enhancing] = NCR_LABEL

    counts = {
        "ncr": int((labels == NCR_LABEL).sum()),
        "ed": int((labels == ED_LABEL).sum()),
        "et": int((labels == convention.et_label).sum()),
    }
    record = PostprocessRecord(
        threshold=threshold,
        et_threshold=et_threshold,
        et_min_voxels=et_min_voxels,
        min_component_voxels=min_component_voxels,
        convention=convention,
        components_removed=components_removed,
        component_voxels_removed=voxels_removed,
        et_voxels_found=et_voxels,
        et_relabelled_as_ncr=relabel,
        voxel_counts=counts,
    )
    return labels, record
