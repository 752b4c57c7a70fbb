"""Exporting a trained model for inference: drop the VAE branch, optionally store float16.

Why: the VAE branch of SegResNetVAE regularises training only (paper section 3.3); its
fully-connected layers are sized for the training crop and make up much of the file.
SegResNetVAE subclasses SegResNet, so the remaining state dict loads into a SegResNet
with identical segmentation outputs.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import torch

from segnode.files import atomic_write
from segnode.pipeline.model.checksum import sha256_hex
from segnode.pipeline.model.manifest import ModelManifest
from segnode.pipeline.model.network import build_network
from segnode.pipeline.model.weights import read_verified_weights

VAE_PREFIX = "vae_"


def export_for_inference(
    model_dir: Path, out_dir: Path, *, model_id: str | None = None, float16: bool = True
) -> ModelManifest:
    """Write ``out_dir`` with a SegResNet-only copy of the model in ``model_dir``.

    Raises:
        ModelError: the source's manifest is invalid or its weights fail their checksum.
    """
    manifest = ModelManifest.read(model_dir)
    state = read_verified_weights(model_dir, manifest).state
    kept = {key: value for key, value in state.items() if not key.startswith(VAE_PREFIX)}
    architecture = manifest.architecture.model_copy(update={"name": "SegResNet"})
    network = build_network(architecture)
    network.load_state_dict({key: value.float() for key, value in kept.items()}, strict=True)
    if float16:
        kept = {
            key: value.half() if value.is_floating_point() else value for key, value in kept.items()
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(kept, buffer)
    data = buffer.getvalue()
    atomic_write(out_dir / "model.pt", lambda partial: partial.write_bytes(data))
    exported = manifest.model_copy(
        update={
            "id": model_id or manifest.id,
            "architecture": architecture,
            "weights_file": "model.pt",
            "weights_sha256": sha256_hex(data),
            "weights_dtype": "float16" if float16 else "float32",
        }
    )
    exported.write(out_dir)
    log_file = model_dir.parent / "train_log.jsonl"
    if log_file.is_file():
        shutil.copy(log_file, out_dir / "train_log.jsonl")
    return exported
