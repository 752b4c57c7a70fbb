"""The paper's loss terms on inputs whose values can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets.segresnet import SegResNetVAE

from segnode.pipeline.model.manifest import ArchitectureSpec
from segnode.pipeline.model.network import build_network
from segnode.pipeline.training.losses import (
    LossTerms,
    VaeOutputs,
    fixed_sigma_offset,
    forward_for_training,
    kl_divergence,
    reconstruction_l2,
    segmentation_dice_loss,
    soft_dice_per_region,
    total_loss,
)


def regions(*channels: list[float]) -> torch.Tensor:
    """(1, R, N) tensor from one flat list per region."""
    return torch.tensor([list(channels)], dtype=torch.float32)


def test_soft_dice_by_hand() -> None:
    probabilities = regions([1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0])
    target = regions([1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0])
    dice = soft_dice_per_region(probabilities, target)
    # 2·1/(1+1); 2·0.5/(0.25+0.25+1); 0/(0+2): no overlap.
    expected = torch.tensor([1.0, 2 / 3, 0.0])
    torch.testing.assert_close(dice, expected, atol=1e-4, rtol=0)


def test_empty_target_and_prediction_give_dice_zero_as_in_the_paper() -> None:
    # The paper puts ε only in the denominator: nothing to find scores 0, not 1.
    zeros = regions([0, 0], [0, 0], [0, 0])
    assert soft_dice_per_region(zeros, zeros).tolist() == [0.0, 0.0, 0.0]
    assert float(segmentation_dice_loss(torch.full_like(zeros, -50.0), zeros)) == pytest.approx(3)


def test_dice_loss_applies_the_sigmoid_and_sums_the_regions() -> None:
    logits = torch.zeros(1, 3, 4)  # sigmoid 0.5 everywhere
    target = regions([1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0])
    # Per region: 2·(0.5·2) / (4·0.25 + 2) = 2/3, so the loss is 3·(1 − 2/3) = 1.
    assert float(segmentation_dice_loss(logits, target)) == pytest.approx(1.0, abs=1e-5)
    perfect = torch.where(target > 0, 50.0, -50.0)
    assert float(segmentation_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-5)


def test_dice_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="prediction"):
        soft_dice_per_region(torch.zeros(1, 3, 4), torch.zeros(1, 3, 5))


def test_kl_of_a_standard_normal_is_zero_and_grows_with_the_mean() -> None:
    assert float(kl_divergence(torch.zeros(128), torch.ones(128))) == pytest.approx(0, abs=1e-6)
    assert float(kl_divergence(torch.ones(128), torch.ones(128))) == pytest.approx(1.0)
    # σ² = e: e − 1 − 1.
    sigma = torch.full((4,), math.exp(0.5))
    assert float(kl_divergence(torch.zeros(4), sigma)) == pytest.approx(math.e - 2, rel=1e-5)
    assert fixed_sigma_offset(1.0) == pytest.approx(0.0, abs=1e-6)


def test_l2_is_the_mean_squared_error() -> None:
    image = torch.zeros(1, 4, 2, 2, 2)
    assert float(reconstruction_l2(image, image + 2)) == pytest.approx(4.0)


def test_total_weights_l2_and_kl_by_a_tenth() -> None:
    logits = torch.zeros(1, 3, 4)
    target = regions([1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0])
    image = torch.zeros(1, 3, 4)
    vae = VaeOutputs(reconstruction=image + 1, z_mean=torch.ones(8), z_sigma=torch.ones(8))
    terms = total_loss(logits, target, image, vae)
    assert isinstance(terms, LossTerms)
    expected = {"dice": 1.0, "l2": 1.0, "kl": 1.0, "total": 1.2}
    assert terms.as_floats() == pytest.approx(expected, abs=1e-4)  # ε in the Dice
    without_vae = total_loss(logits, target)
    assert without_vae.as_floats() == pytest.approx(
        {**expected, "l2": 0, "kl": 0, "total": 1}, abs=1e-4
    )
    with pytest.raises(ValueError, match="input image"):
        total_loss(logits, target, None, vae)


def test_split_terms_reproduce_monais_combined_vae_loss() -> None:
    """Same seed: our logits equal MONAI's forward, and L2 + KL − offset its vae_loss."""
    spec = ArchitectureSpec(init_filters=8, vae_input_shape=(32, 32, 32))
    network = build_network(spec).train()
    image = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(7)
        monai_logits, monai_vae_loss = network(image)
        torch.manual_seed(7)
        logits, vae = forward_for_training(network, image)
    assert vae is not None
    assert network.vae_default_std == 0.3
    torch.testing.assert_close(logits, monai_logits)
    assert vae.reconstruction.shape == image.shape
    ours = reconstruction_l2(image, vae.reconstruction) + kl_divergence(vae.z_mean, vae.z_sigma)
    offset = fixed_sigma_offset(0.3)  # MONAI's vae_default_std, fixed by build_network
    assert float(ours) - offset == pytest.approx(float(monai_vae_loss), rel=1e-5)


class ToChannelsLast(torch.nn.Module):
    """Hands on its input in channels_last_3d, as oneDNN convolutions return it on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d)


def test_vae_branch_takes_channels_last_tensors_where_monai_fails() -> None:
    spec = ArchitectureSpec(init_filters=8, vae_input_shape=(32, 32, 32))
    network = build_network(spec).train()
    assert isinstance(network, SegResNetVAE)
    network.vae_down = torch.nn.Sequential(network.vae_down, ToChannelsLast())
    image = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        encoded, _ = network.encode(image)
        with pytest.raises(RuntimeError, match="view size is not compatible"):
            network._get_vae_loss(image, encoded)
        torch.manual_seed(0)
        logits, vae = forward_for_training(network, image)
    assert vae is not None and vae.reconstruction.shape == image.shape


def test_eval_mode_has_no_vae_terms() -> None:
    spec = ArchitectureSpec(init_filters=8, vae_input_shape=(32, 32, 32))
    network = build_network(spec).eval()
    with torch.no_grad():
        logits, vae = forward_for_training(network, torch.zeros(1, 4, 32, 32, 32))
    assert vae is None and logits.shape == (1, 3, 32, 32, 32)
