"""A tiny randomly initialised model folder for tests (no weights to download, none in git).

8-filter SegResNet (about 0.3 M parameters): the real architecture at the smallest size that
GroupNorm(8) allows, so loading, checksums and inference run through the product code paths.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from segnode.pipeline.model.manifest import ArchitectureSpec, ModelManifest
from segnode.pipeline.model.network import build_network

TINY_ARCHITECTURE = ArchitectureSpec(name="SegResNet", init_filters=8, vae_input_shape=None)


def tiny_network(seed: int = 0) -> torch.nn.Module:
    """Random 8-filter SegResNet, the same weights for the same seed."""
    torch.manual_seed(seed)
    return build_network(TINY_ARCHITECTURE)


def write_model_folder(
    folder: Path, *, seed: int = 0, output_channels: tuple[str, ...] = ("wt", "tc", "et")
) -> ModelManifest:
    """Weights plus a manifest carrying their real sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.pt"
    torch.save(tiny_network(seed).state_dict(), weights)
    manifest = ModelManifest(
        id="tiny-random-test",
        name="Tiny random SegResNet (tests only)",
        version="0.0.0",
        architecture=TINY_ARCHITECTURE,
        output_channels=output_channels,
        weights_file=weights.name,
        weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
        training_data="none: random weights",
    )
    manifest.write(folder)
    return manifest
