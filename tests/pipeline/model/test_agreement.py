"""The TTA passes' agreement: volumes per pass, disputed voxels, probability spread.

The probability maps are SYNTHETIC boxes built here: agreement is arithmetic over passes, and
a known geometry (a 10x10x10 box and a copy shifted by k voxels) gives figures computed by
hand. The real flips go through ``predict_regions`` with a tiny untrained network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segnode.pipeline.errors import InferenceError
from segnode.pipeline.model.agreement import PassAgreement
from segnode.pipeline.model.inference import FLIPS, predict_regions
from segnode.pipeline.model.segmentation import combined_agreement
from segnode.vocabulary import Region
from tests.pipeline.model.tiny_model import tiny_network

IDENTITY_ORDER = (0, 1, 2)


def _box(shift: int = 0, value: float = 0.9, shape: int = 24) -> torch.Tensor:
    """(1, 3, n, n, n): the same 10-voxel cube in WT, TC and ET, shifted along x by ``shift``."""
    volume = torch.zeros((1, 3, shape, shape, shape))
    volume[:, :, 5 + shift : 15 + shift, 5:15, 5:15] = value
    return volume


def test_identical_passes_agree_completely() -> None:
    agreement = PassAgreement()
    for _ in range(4):
        agreement.add(_box())
    summary = agreement.summary(IDENTITY_ORDER)
    assert summary.passes == 4
    assert summary.pass_voxels[Region.WT] == (1000, 1000, 1000, 1000)
    assert summary.disagreement == {Region.WT: 0.0, Region.TC: 0.0, Region.ET: 0.0}
    assert summary.mean_std[Region.WT] == pytest.approx(0.0, abs=1e-6)


def test_a_shifted_pass_disputes_the_voxels_it_does_not_share() -> None:
    agreement = PassAgreement()
    agreement.add(_box(0))
    agreement.add(_box(2))  # shares 8 of 10 slabs: union 12 x 100, shared 8 x 100
    summary = agreement.summary(IDENTITY_ORDER, voxel_scale=8)
    assert summary.disagreement[Region.WT] == pytest.approx(400 / 1200)
    # Disputed voxels have probabilities 0.9 and 0 (std 0.45), shared ones 0.9 and 0.9 (0).
    assert summary.mean_std[Region.WT] == pytest.approx(0.45 * 400 / 1200, rel=1e-5)
    assert summary.pass_voxels[Region.ET] == (8000, 8000)  # counted on the image grid
    assert summary.volumes_ml(0.001)[Region.TC] == (8.0, 8.0)


def test_the_order_maps_network_channels_to_regions() -> None:
    agreement = PassAgreement()
    first, second = _box(), _box()
    second[:, 2] = 0.0  # the network's channel 2 is empty in the second pass
    agreement.add(first)
    agreement.add(second)
    summary = agreement.summary((2, 0, 1))  # WT is channel 2, TC 0, ET 1
    assert summary.pass_voxels[Region.WT] == (1000, 0)
    assert summary.disagreement[Region.WT] == 1.0
    assert summary.disagreement[Region.TC] == 0.0


def test_summarising_nothing_or_mixing_shapes_is_an_error() -> None:
    with pytest.raises(InferenceError, match="no pass"):
        PassAgreement().summary(IDENTITY_ORDER)
    agreement = PassAgreement()
    agreement.add(_box())
    with pytest.raises(InferenceError, match="pass of shape"):
        agreement.add(_box(shape=16))


def test_predict_regions_gives_every_flip_to_the_collector_and_one_pass_is_no_agreement() -> None:
    torch.manual_seed(0)
    network = tiny_network()
    image = np.random.default_rng(0).standard_normal((4, 16, 16, 16)).astype(np.float32)
    options = {"output_channels": ("wt", "tc", "et"), "roi_size": None, "device": torch.device("cpu"), "amp_dtype": None}
    collector = PassAgreement()
    predict_regions([network], image, tta=True, agreement=collector, **options)  # type: ignore[arg-type]
    assert collector.passes == len(FLIPS) == 8
    summary = collector.summary(IDENTITY_ORDER)
    assert combined_agreement([summary]) == summary
    single = PassAgreement()
    plain = predict_regions([network], image, tta=False, agreement=single, **options)  # type: ignore[arg-type]
    alone = single.summary(IDENTITY_ORDER)
    assert combined_agreement([alone]) is None
    # The first flip is the identity: its pass is the plain prediction, voxel for voxel.
    for index, region in enumerate((Region.WT, Region.TC, Region.ET)):
        assert summary.pass_voxels[region][0] == alone.pass_voxels[region][0] == int((plain[index] > 0.5).sum())


def test_an_ensemble_keeps_every_pass_and_the_worst_members_figures() -> None:
    calm, restless = PassAgreement(), PassAgreement()
    for _ in range(2):
        calm.add(_box())
    restless.add(_box(0))
    restless.add(_box(3))
    combined = combined_agreement([calm.summary(IDENTITY_ORDER), restless.summary(IDENTITY_ORDER)])
    assert combined is not None
    assert combined.passes == 4
    assert combined.pass_voxels[Region.WT] == (1000, 1000, 1000, 1000)
    assert combined.disagreement[Region.WT] == pytest.approx(600 / 1300)


def test_each_channel_counts_at_its_own_threshold() -> None:
    """Pass volumes are taken where post-processing draws the regions (e.g. 0.85, ET 0.8)."""
    agreement = PassAgreement(thresholds=(0.85, 0.85, 0.8))
    probabilities = _box(value=0.82)  # above ET's threshold, below WT's and TC's
    agreement.add(probabilities)
    agreement.add(probabilities)
    summary = agreement.summary(IDENTITY_ORDER)
    assert summary.pass_voxels == {Region.WT: (0, 0), Region.TC: (0, 0), Region.ET: (1000, 1000)}
    with pytest.raises(InferenceError, match="2 thresholds for 3 channels"):
        PassAgreement(thresholds=(0.5, 0.5)).add(probabilities)
