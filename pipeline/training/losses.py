"""The training loss of Myronenko 2018 (section 3.5): soft Dice + 0.1 L2 + 0.1 KL.

MONAI's SegResNetVAE returns its VAE loss as one number (regulariser + reconstruction MSE,
weight 1 each). We run the VAE branch ourselves (:func:`vae_branch`, the same layers and
the same noise draw as MONAI's ``_get_vae_loss``) so the reconstruction and the KL term
can be logged apart; the gradients are the ones MONAI's combined term gives.

Departures from the paper's text, kept on purpose:

* L2 is the *mean* squared error over voxels (as MONAI and NVIDIA's release do), not the
  sum the paper's ``||I_input - I_pred||²`` suggests; the sum would swamp the Dice term.
* KL is ``mean(μ² + σ² − log σ² − 1)`` over the latent variables (the paper's formula, its
  ``1/N`` taken over the latent vector). The project's network fixes σ (MONAI's
  ``vae_estimate_std=False``, σ = 0.3), so KL = mean(μ²) + constant: the gradient is
  MONAI's, the value is shifted by σ² − log σ² − 1 ≈ 1.498 (see :func:`fixed_sigma_offset`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets.segresnet import SegResNetVAE

from segnode.pipeline.model.network import segmentation_logits

DICE_EPS = 1e-5
"""The paper's ε: only in the denominator, so an empty target gives Dice 0, not 1."""
L2_WEIGHT = 0.1
KL_WEIGHT = 0.1


@dataclass(frozen=True, slots=True)
class VaeOutputs:
    """What the VAE branch produced for one batch."""

    reconstruction: torch.Tensor
    """Reconstructed input, same shape as the network input."""
    z_mean: torch.Tensor
    z_sigma: torch.Tensor


@dataclass(frozen=True, slots=True)
class LossTerms:
    """The paper's loss and its parts (tensors, so ``total`` can be back-propagated)."""

    dice: torch.Tensor
    """Σ over WT, TC, ET of (1 − soft Dice); 0 (perfect) to 3."""
    l2: torch.Tensor
    kl: torch.Tensor
    total: torch.Tensor
    """dice + 0.1·l2 + 0.1·kl (+ bce_weight·bce for the BCE + Dice recipes)."""
    bce: torch.Tensor | None = None
    """Mean binary cross-entropy of the region sigmoids; None when the recipe has no BCE term."""

    def as_floats(self) -> dict[str, float]:
        """Plain numbers for the training log."""
        return {
            "dice": float(self.dice.detach()),
            "l2": float(self.l2.detach()),
            "kl": float(self.kl.detach()),
            "total": float(self.total.detach()),
            **({"bce": float(self.bce.detach())} if self.bce is not None else {}),
        }


def soft_dice_per_region(
    probabilities: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS
) -> torch.Tensor:
    """Paper eq. 1 per channel: 2·Σ(p·t) / (Σp² + Σt² + ε).

    Args:
        probabilities: (B, R, ...) values in [0, 1].
        target: (B, R, ...) binary regions, same shape.
        eps: denominator guard.

    Returns:
        (R,) soft Dice per region, sums taken over the batch and all voxels.
    """
    if probabilities.shape != target.shape:
        raise ValueError(f"prediction {tuple(probabilities.shape)} != target {tuple(target.shape)}")
    dims = [0, *range(2, probabilities.ndim)]
    p, t = probabilities.float(), target.float()
    intersection = (p * t).sum(dim=dims)
    denominator = (p * p).sum(dim=dims) + (t * t).sum(dim=dims) + eps
    return 2.0 * intersection / denominator


def segmentation_dice_loss(logits: torch.Tensor, target_regions: torch.Tensor) -> torch.Tensor:
    """Σ over regions of (1 − soft Dice) on sigmoid outputs (the paper's sigmoid heads)."""
    dice = soft_dice_per_region(torch.sigmoid(logits.float()), target_regions)
    return (1.0 - dice).sum()


def kl_divergence(z_mean: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """Paper's L_KL: mean(μ² + σ² − log σ² − 1); 0 for a standard normal."""
    variance = z_sigma.float() ** 2
    return (z_mean.float() ** 2 + variance - torch.log(variance + 1e-8) - 1.0).mean()


def fixed_sigma_offset(sigma: float) -> float:
    """σ² − log σ² − 1: by how much :func:`kl_divergence` exceeds MONAI's mean(μ²)."""
    return sigma**2 - math.log(sigma**2 + 1e-8) - 1.0


def reconstruction_l2(image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the network input and the VAE's reconstruction."""
    return F.mse_loss(reconstruction.float(), image.float())


def vae_branch(network: SegResNetVAE, encoded: torch.Tensor) -> VaeOutputs:
    """MONAI's VAE branch (``SegResNetVAE._get_vae_loss``, MONAI 1.6.1) without the loss.

    Same layers in the same order and the same single ``randn_like`` draw, so with equal
    RNG state ``reconstruction_l2 + kl_divergence − fixed_sigma_offset`` equals MONAI's
    ``vae_loss`` (a test holds it to that, which catches a MONAI change). One change:
    ``reshape`` where MONAI has ``view``, which fails on channels_last_3d tensors (the CPU
    format we train in) as soon as oneDNN picks the convolution, e.g. at a 128³ crop.
    """
    x = network.vae_down(encoded)
    x = x.reshape(-1, network.vae_fc1.in_features)
    z_mean = network.vae_fc1(x)
    noise = torch.randn_like(z_mean)
    if network.vae_estimate_std:
        z_sigma = F.softplus(network.vae_fc2(x))
    else:
        z_sigma = torch.full_like(z_mean, network.vae_default_std)
    x = network.act_mod(network.vae_fc3(z_mean + z_sigma * noise))
    x = x.reshape([-1, network.smallest_filters, *network.fc_insize])
    x = network.vae_fc_up_sample(x)
    for upsample, layer in zip(network.up_samples, network.up_layers, strict=True):
        x = layer(upsample(x))
    return VaeOutputs(network.vae_conv_final(x), z_mean, z_sigma)


def forward_for_training(
    network: torch.nn.Module, image: torch.Tensor
) -> tuple[torch.Tensor, VaeOutputs | None]:
    """Segmentation logits and, for SegResNetVAE in train mode, the VAE branch's outputs.

    Calls ``encode``/``decode`` directly instead of ``forward``, which would run the VAE
    branch a second time to produce its combined loss.
    """
    if isinstance(network, SegResNetVAE) and network.training:
        encoded, skips = network.encode(image)
        skips.reverse()
        logits = network.decode(encoded, skips)
        return logits, vae_branch(network, encoded)
    return segmentation_logits(network, image), None


def total_loss(
    logits: torch.Tensor,
    target_regions: torch.Tensor,
    image: torch.Tensor | None = None,
    vae: VaeOutputs | None = None,
    l2_weight: float = L2_WEIGHT,
    kl_weight: float = KL_WEIGHT,
    bce_weight: float = 0.0,
) -> LossTerms:
    """dice + 0.1·L2 + 0.1·KL (paper section 3.5); L2 and KL are 0 without a VAE branch.

    With ``bce_weight`` > 0 the mean binary cross-entropy of the three region sigmoids is
    added (the BCE + Dice loss of region-based BraTS training, nnU-Net's BraTS 2021 entry and
    the 3D U-Net course recipe): Dice alone gives no gradient on crops without tumour and
    drives probabilities to 0/1, which leaves nothing for a tuned threshold to work with.

    Args:
        logits: (B, 3, ...) segmentation logits (WT, TC, ET).
        target_regions: (B, 3, ...) binary regions.
        image: the network input, needed with ``vae``.
        vae: the VAE branch's outputs, or None (SegResNet, or eval mode).
        l2_weight: weight of the reconstruction term.
        kl_weight: weight of the KL term.
    """
    dice = segmentation_dice_loss(logits, target_regions)
    zero = dice.new_zeros(())
    bce = (
        F.binary_cross_entropy_with_logits(logits.float(), target_regions.float())
        if bce_weight > 0
        else None
    )
    base = dice if bce is None else dice + bce_weight * bce
    if vae is None:
        return LossTerms(dice=dice, l2=zero, kl=zero, total=base, bce=bce)
    if image is None:
        raise ValueError("total_loss: the VAE terms need the network input image")
    l2 = reconstruction_l2(image, vae.reconstruction)
    kl = kl_divergence(vae.z_mean, vae.z_sigma)
    total = base + l2_weight * l2 + kl_weight * kl
    return LossTerms(dice=dice, l2=l2, kl=kl, total=total, bce=bce)
