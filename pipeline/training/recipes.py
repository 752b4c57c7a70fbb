"""The training recipes segnode compares by cross-validation (``docs/models.md``).

A recipe is everything about a training run except its data and its length: network, loss,
crop, grid spacing, crop sampling and learning rate. Naming them keeps the CV table, the
command line (``segnode train --recipe``) and the shipped model's manifest in agreement.

Why 2 mm: on 2 CPU cores a 1 mm SegResNet step on a 128³ crop takes ~10 s (session 2), so a
fold run of 10 minutes would see each case 3 times. On a 2 mm grid the whole brain box fits
one 64×80×64 crop and a step costs a fraction of that (``bench/train_step.py``), which buys
the hundreds of steps a network needs. The model predicts on the 2 mm grid and its
probabilities are interpolated back to 1 mm (``segnode.pipeline.model.resolution``), so the label map
and every score are on the 1 mm grid the node writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from segnode.pipeline.model.manifest import ArchitectureSpec
from segnode.pipeline.model.network import build_network
from segnode.pipeline.training.augmentation import Shape3
from segnode.pipeline.training.losses import LossTerms, forward_for_training, total_loss

COARSE_SPACING_MM = 2.0
COARSE_CROP: Shape3 = (64, 80, 64)
"""At 2 mm: 128×160×128 mm, most of a brain box (about 150×180×140 mm with its margin)."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """One way to train: what the CV table compares."""

    name: str
    description: str
    architecture: ArchitectureSpec
    crop: Shape3 = COARSE_CROP
    spacing_mm: float = COARSE_SPACING_MM
    bce_weight: float = 0.0
    """0: the paper's soft Dice (+ VAE terms); 1: BCE + Dice."""
    foreground_probability: float = 0.0
    learning_rate: float = 1e-4
    tags: tuple[str, ...] = field(default=())


def _segresnet(name: str, filters: int, crop: Shape3 = COARSE_CROP) -> ArchitectureSpec:
    return ArchitectureSpec(
        name="SegResNetVAE" if name == "SegResNetVAE" else "SegResNet",
        init_filters=filters,
        vae_input_shape=crop if name == "SegResNetVAE" else None,
    )


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="paper-vae",
            description=(
                "Myronenko 2018 scaled to 2 CPU cores: SegResNetVAE, 8 filters, soft Dice + "
                "0.1 L2 + 0.1 KL, Adam with poly decay, uniform crops, 2 mm"
            ),
            architecture=_segresnet("SegResNetVAE", 8),
            learning_rate=1e-3,
        ),
        Recipe(
            name="paper-novae",
            description="the same without the VAE branch (SegResNet, soft Dice)",
            architecture=_segresnet("SegResNet", 8),
            learning_rate=1e-3,
        ),
        Recipe(
            name="unet-bce-dice",
            description=(
                "MONAI residual 3D U-Net (16-32-64-128, 2 residual units, instance norm), "
                "BCE + Dice, threshold tuned on the validation folds"
            ),
            architecture=ArchitectureSpec(
                name="UNet", unet_channels=(16, 32, 64, 128), unet_res_units=2, dropout_prob=0.1
            ),
            bce_weight=1.0,
            learning_rate=1e-3,
        ),
        Recipe(
            name="segresnet-bce-dice",
            description=(
                "SegResNet 8 filters trained region-based with BCE + Dice (the BraTS 2021 "
                "winners' loss), half of the crops centred on tumour"
            ),
            architecture=_segresnet("SegResNet", 8),
            bce_weight=1.0,
            foreground_probability=0.5,
            learning_rate=1e-3,
        ),
        Recipe(
            name="segresnet-fg48",
            description=(
                "segresnet-bce-dice on 48x48x48 crops (9.6 cm at 2 mm), two thirds centred on "
                "tumour: a third of the voxels per step, so three times the steps in the same "
                "time; inference still sees the whole brain box"
            ),
            architecture=_segresnet("SegResNet", 8),
            crop=(48, 48, 48),
            bce_weight=1.0,
            foreground_probability=0.67,
            learning_rate=1e-3,
        ),
    )
}
"""Every recipe the CV compares; ``DEFAULT_RECIPE`` trains the shipped model."""

DEFAULT_RECIPE = "segresnet-fg48"


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None


def build_recipe_network(recipe: Recipe) -> torch.nn.Module:
    return build_network(recipe.architecture)


def recipe_loss(
    recipe: Recipe, network: torch.nn.Module, image: torch.Tensor, target: torch.Tensor
) -> LossTerms:
    """The recipe's loss for one batch (network in train mode for the VAE terms)."""
    logits, vae = forward_for_training(network, image)
    return total_loss(logits, target, image, vae, bce_weight=recipe.bce_weight)
