"""The network of the paper, built from a manifest's architecture (MONAI, not re-written).

MONAI's SegResNetVAE is Myronenko's encoder-decoder with the VAE branch; in eval mode it
runs at SegResNet's speed and the VAE branch is unused. SegResNet (no VAE) covers site
bundles such as the MONAI model zoo's BraTS bundle (16 filters).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets.segresnet import SegResNet, SegResNetVAE
from monai.networks.nets.unet import UNet

from segnode.pipeline.model.manifest import ArchitectureSpec

_LOGIT_EPS = 1e-6


class MeanOfMembers(torch.nn.Module):
    """An ensemble stored as one network: its output is the logit of the members' mean
    probability, so the sigmoid that inference applies gives the same average as
    ``[model] ensemble`` would, from one weights file with one checksum."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack(
            [torch.sigmoid(segmentation_logits(member, batch).float()) for member in self.members]
        ).mean(dim=0)
        # torch.logit(p, eps) spelled out: OpenVINO's PyTorch front end has no aten::logit.
        clamped = probabilities.clamp(_LOGIT_EPS, 1.0 - _LOGIT_EPS)
        return torch.log(clamped) - torch.log1p(-clamped)


def build_network(spec: ArchitectureSpec) -> torch.nn.Module:
    if spec.ensemble_members > 1:
        single = spec.model_copy(update={"ensemble_members": 1})
        return MeanOfMembers([build_network(single) for _ in range(spec.ensemble_members)])
    if spec.name == "UNet":
        return UNet(
            spatial_dims=3,
            in_channels=spec.in_channels,
            out_channels=spec.out_channels,
            channels=spec.unet_channels,
            strides=(2,) * (len(spec.unet_channels) - 1),
            num_res_units=spec.unet_res_units,
            norm=("INSTANCE", {"affine": True}),
            dropout=spec.dropout_prob,
        )
    backbone: dict[str, Any] = {
        "spatial_dims": 3,
        "init_filters": spec.init_filters,
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "dropout_prob": spec.dropout_prob,
        "norm": ("GROUP", {"num_groups": spec.norm_groups}),
        "blocks_down": spec.blocks_down,
        "blocks_up": spec.blocks_up,
    }
    if spec.name == "SegResNet":
        return SegResNet(**backbone)
    if spec.vae_input_shape is None:
        raise ValueError("SegResNetVAE needs vae_input_shape (the training crop)")
    return SegResNetVAE(input_image_size=spec.vae_input_shape, vae_estimate_std=False, **backbone)


def segmentation_logits(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits of the segmentation head, whatever the network (the VAE output is dropped)."""
    output = network(batch)
    if isinstance(output, tuple):
        logits: torch.Tensor = output[0]
        return logits
    result: torch.Tensor = output
    return result
