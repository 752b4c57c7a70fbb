"""predict_regions (TTA, ensembles, channel order, padding, windows) and postprocess.

Networks are tiny, randomly initialised with fixed seeds: the tests check the arithmetic around
the network, which does not depend on trained weights. Post-processing tests use small
SYNTHETIC probability maps built here, not real data.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from segnode.pipeline.errors import InferenceError
from segnode.pipeline.model.inference import (
    DEFAULT_WINDOW,
    FLIPS,
    choose_roi,
    padded_shape,
    padding_for,
    predict_regions,
    region_order,
)
from segnode.pipeline.model.network import segmentation_logits
from segnode.pipeline.model.postprocess import postprocess
from segnode.vocabulary import ED_LABEL, NCR_LABEL, LabelConvention
from tests.pipeline.model.tiny_model import tiny_network

CPU = torch.device("cpu")
ORDER = ("wt", "tc", "et")


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, *shape)).astype(np.float32)


def _predict(networks: list[torch.nn.Module], image: np.ndarray, **options: object) -> np.ndarray:
    settings: dict[str, object] = {
        "output_channels": ORDER,
        "tta": False,
        "roi_size": None,
        "device": CPU,
        "amp_dtype": None,
    }
    settings.update(options)
    return predict_regions(networks, image, **settings)  # type: ignore[arg-type]


class PointwiseSpy(torch.nn.Module):
    """A 1x1x1 convolution (so every voxel's output depends on that voxel only) that records
    the shape and memory layout of what it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(4, 3, kernel_size=1)
        self.seen: list[tuple[tuple[int, ...], bool]] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        channels_last = batch.is_contiguous(memory_format=torch.channels_last_3d)
        self.seen.append((tuple(batch.shape), channels_last))
        result: torch.Tensor = self.conv(batch)
        return result

    def expected(self, image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = self.conv(torch.from_numpy(image)[None])
        return torch.sigmoid(logits)[0].numpy()


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return tiny_network(seed=0)


def test_flips_are_the_eight_axis_combinations() -> None:
    assert len(FLIPS) == 8 and len(set(FLIPS)) == 8
    assert FLIPS[0] == ()
    assert set(FLIPS) == {axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n)}


def test_tta_equals_mean_of_the_eight_flipped_predictions(network: torch.nn.Module) -> None:
    image = _image((16, 16, 16))
    batch = torch.from_numpy(image)[None]
    network.eval()
    manual = torch.zeros(1, 3, 16, 16, 16)
    with torch.no_grad():
        for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
            flipped = torch.flip(batch, axes) if axes else batch
            probabilities = torch.sigmoid(segmentation_logits(network, flipped))
            manual += torch.flip(probabilities, axes) if axes else probabilities
    manual /= 8

    result = _predict([network], image, tta=True)

    assert result.shape == (3, 16, 16, 16) and result.dtype == np.float32
    np.testing.assert_allclose(result, manual[0].numpy(), atol=1e-5)
    plain = _predict([network], image, tta=False)
    assert np.abs(result - plain).max() > 1e-3, "TTA made no difference: the test proves nothing"


def test_tta_prediction_is_flip_equivariant(network: torch.nn.Module) -> None:
    image = _image((16, 16, 8), seed=3)
    result = _predict([network], image, tta=True)
    of_flipped = _predict([network], np.ascontiguousarray(image[:, ::-1, :, ::-1]), tta=True)
    np.testing.assert_allclose(of_flipped, result[:, ::-1, :, ::-1], atol=1e-5)


def test_ensemble_is_the_mean_over_networks(network: torch.nn.Module) -> None:
    other = tiny_network(seed=1)
    image = _image((16, 16, 16), seed=2)
    both = _predict([network, other], image)
    each = (_predict([network], image) + _predict([other], image)) / 2
    np.testing.assert_allclose(both, each, atol=1e-6)


def test_output_channels_are_reordered_to_regions(network: torch.nn.Module) -> None:
    image = _image((16, 16, 16))
    as_ours = _predict([network], image, output_channels=("wt", "tc", "et"))
    as_bundle = _predict([network], image, output_channels=("tc", "wt", "et"))
    # Raw channel 0 means TC in a bundle's order, so it must come back second.
    np.testing.assert_array_equal(as_bundle[0], as_ours[1])
    np.testing.assert_array_equal(as_bundle[1], as_ours[0])
    np.testing.assert_array_equal(as_bundle[2], as_ours[2])
    assert region_order(("et", "wt", "tc")) == [1, 2, 0]
    with pytest.raises(InferenceError, match="permutation"):
        region_order(("wt", "tc", "ncr"))


def test_padding_to_multiples_of_8_and_crop_back() -> None:
    assert padding_for((155, 240, 13)) == ((2, 3), (0, 0), (1, 2))
    assert padded_shape((155, 240, 13)) == (160, 240, 16)

    spy = PointwiseSpy()
    image = _image((13, 17, 9), seed=4)
    result = _predict([spy], image)

    assert result.shape == (3, 13, 17, 9)
    assert spy.seen == [((1, 4, 16, 24, 16), True)], "padded to 8s, channels_last_3d on CPU"
    # A pointwise network gives each voxel its own value: any misaligned crop would show.
    np.testing.assert_allclose(result, spy.expected(image), atol=1e-6)


def test_sliding_window_matches_one_pass_for_a_pointwise_network() -> None:
    spy = PointwiseSpy()
    image = _image((21, 16, 11), seed=5)
    windowed = _predict([spy], image, roi_size=(8, 8, 8), overlap=0.5)
    assert len(spy.seen) > 1 and all(shape[2:] == (8, 8, 8) for shape, _ in spy.seen)
    np.testing.assert_allclose(windowed, spy.expected(image), atol=1e-5)


def test_networks_run_in_eval_mode_and_keep_their_mode(network: torch.nn.Module) -> None:
    image = _image((16, 16, 16), seed=6)
    network.train()  # dropout 0.2 would make two runs differ
    first = _predict([network], image)
    assert network.training, "the caller's train/eval flag is restored"
    second = _predict([network], image)
    np.testing.assert_array_equal(first, second)
    network.eval()


def test_autocast_is_ignored_on_cpu(network: torch.nn.Module) -> None:
    image = _image((16, 16, 16), seed=7)
    np.testing.assert_array_equal(
        _predict([network], image, amp_dtype=torch.bfloat16), _predict([network], image)
    )
    with pytest.raises(InferenceError, match="amp_dtype"):
        _predict([network], image, amp_dtype=torch.float64)


@pytest.mark.parametrize(
    ("image", "options", "message"),
    [
        (np.zeros((4, 8, 8), np.float32), {}, "channels, x, y, z"),
        (np.zeros((4, 8, 8, 8), np.int16), {}, "floating point"),
        (np.full((4, 8, 8, 8), np.nan, np.float32), {}, "NaN"),
        (np.zeros((4, 8, 8, 8), np.float32), {"roi_size": (8, 8, 12)}, "multiples of 8"),
        (np.zeros((4, 8, 8, 8), np.float32), {"overlap": 1.0}, "overlap"),
    ],
)
def test_bad_inputs_are_refused(
    image: np.ndarray, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InferenceError, match=message):
        _predict([PointwiseSpy()], image, **options)
    with pytest.raises(InferenceError, match="no network"):
        _predict([], np.zeros((4, 8, 8, 8), np.float32))


def test_choose_roi_runs_brats_grids_in_one_pass() -> None:
    assert choose_roi((240, 240, 155)) is None
    assert choose_roi((256, 256, 256)) == DEFAULT_WINDOW
    assert choose_roi((240, 240, 155), max_full_volume_voxels=128**3) == DEFAULT_WINDOW
    assert choose_roi((300, 300, 300), window=(96, 96, 96)) == (96, 96, 96)
    with pytest.raises(InferenceError, match="multiples of 8"):
        choose_roi((240, 240, 155), window=(100, 100, 100))


# --- post-processing, on SYNTHETIC probability maps ---------------------------------------


def _synthetic_probabilities(shape: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """Low probability everywhere; the tests paint regions in with 0.9."""
    return np.full((3, *shape), 0.1, dtype=np.float32)


def _paint(probabilities: np.ndarray, region: int, box: tuple[slice, ...]) -> None:
    index: tuple[int | slice, ...] = (region, *box)
    probabilities[index] = 0.9


def _tumour(et_side: int) -> np.ndarray:
    """WT 20^3 cube, TC 10^3 inside it, ET a cube of ``et_side`` inside TC (synthetic)."""
    probabilities = _synthetic_probabilities()
    _paint(probabilities, 0, (slice(10, 30),) * 3)
    _paint(probabilities, 1, (slice(15, 25),) * 3)
    _paint(probabilities, 2, (slice(15, 15 + et_side),) * 3)
    return probabilities


def test_small_et_is_relabelled_as_ncr() -> None:
    labels, record = postprocess(_tumour(et_side=4), et_min_voxels=500)
    assert record.et_voxels_found == 64 and record.et_relabelled_as_ncr
    assert not (labels == 4).any()
    assert record.voxel_counts == {"ncr": 1000, "ed": 8000 - 1000, "et": 0}

    kept, kept_record = postprocess(_tumour(et_side=4), et_min_voxels=None)
    assert int((kept == 4).sum()) == 64 and not kept_record.et_relabelled_as_ncr
    assert kept_record.voxel_counts == {"ncr": 1000 - 64, "ed": 7000, "et": 64}


def test_large_et_is_kept() -> None:
    labels, record = postprocess(_tumour(et_side=9), et_min_voxels=500)
    assert int((labels == 4).sum()) == 729 and not record.et_relabelled_as_ncr


def test_small_components_are_removed() -> None:
    probabilities = _tumour(et_side=9)
    _paint(probabilities, 0, (slice(33, 36), slice(33, 36), slice(33, 36)))  # 27-voxel speck
    # One voxel touching the main tumour only at a corner: 26-connected, so part of it.
    _paint(probabilities, 0, (slice(30, 31), slice(30, 31), slice(30, 31)))

    labels, record = postprocess(probabilities, min_component_voxels=50)
    assert record.components_removed == 1 and record.component_voxels_removed == 27
    assert not labels[33:36, 33:36, 33:36].any()
    assert labels[30, 30, 30] == ED_LABEL

    kept, kept_record = postprocess(probabilities, min_component_voxels=None)
    assert kept_record.components_removed == 0 and (kept[33:36, 33:36, 33:36] == ED_LABEL).all()


def test_removed_specks_do_not_count_towards_the_et_volume() -> None:
    probabilities = _tumour(et_side=6)  # 216 ET voxels in the main tumour
    for region in range(3):  # a 27-voxel speck of ET, far from it
        _paint(probabilities, region, (slice(33, 36),) * 3)
    _, record = postprocess(probabilities, min_component_voxels=50, et_min_voxels=None)
    assert record.et_voxels_found == 216


def test_threshold_nesting_and_the_2023_convention() -> None:
    probabilities = _tumour(et_side=9)
    _paint(probabilities, 2, (slice(2, 4),) * 3)  # "ET" outside WT: not nested, dropped
    probabilities[0, 10:30, 10:30, 10:12] = 0.5  # exactly at the threshold: inside
    labels, record = postprocess(
        probabilities, convention=LabelConvention.BRATS_2023, min_component_voxels=None
    )
    assert set(np.unique(labels).tolist()) == {0, NCR_LABEL, ED_LABEL, 3}
    assert not labels[2:4, 2:4, 2:4].any()
    assert labels.dtype == np.uint8 and record.convention is LabelConvention.BRATS_2023
    assert record.as_dict()["convention"] == "2023"

    none, _ = postprocess(probabilities, threshold=0.95)
    assert not none.any()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.0}, "threshold"),
        ({"et_min_voxels": -1}, "et_min_voxels"),
        ({"min_component_voxels": -5}, "min_component_voxels"),
    ],
)
def test_bad_postprocessing_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(InferenceError, match=message):
        postprocess(_synthetic_probabilities((8, 8, 8)), **options)  # type: ignore[arg-type]
    with pytest.raises(InferenceError, match=r"\(3, x, y, z\)"):
        postprocess(np.zeros((2, 8, 8, 8), np.float32))
