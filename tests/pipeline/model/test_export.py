"""Export for inference: the VAE branch goes, the segmentation output stays."""

from __future__ import annotations

from pathlib import Path

import torch

from segnode.pipeline.model.checksum import sha256_hex
from segnode.pipeline.model.manifest import ArchitectureSpec, ModelManifest
from segnode.pipeline.model.network import build_network, segmentation_logits
from segnode.pipeline.model.registry import load_model
from segnode.pipeline.training.export import export_for_inference


def _vae_model(folder: Path) -> torch.nn.Module:
    """A small randomly initialised SegResNetVAE (synthetic weights: only shapes matter here)."""
    torch.manual_seed(0)
    spec = ArchitectureSpec(name="SegResNetVAE", init_filters=8, vae_input_shape=(32, 32, 32))
    network = build_network(spec)
    folder.mkdir()
    torch.save(network.state_dict(), folder / "model.pt")
    ModelManifest(
        id="tiny-vae", name="tiny", version="0", architecture=spec,
        weights_sha256=sha256_hex(folder / "model.pt"),
    ).write(folder)
    return network.eval()


def test_export_drops_the_vae_branch_and_keeps_the_output(tmp_path: Path) -> None:
    original = _vae_model(tmp_path / "trained")
    manifest = export_for_inference(tmp_path / "trained", tmp_path / "exported", float16=False)
    assert manifest.architecture.name == "SegResNet"
    assert (tmp_path / "exported" / "model.pt").stat().st_size < (tmp_path / "trained" / "model.pt").stat().st_size
    exported = load_model(tmp_path / "exported").network
    batch = torch.randn(1, 4, 32, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(segmentation_logits(exported, batch), segmentation_logits(original, batch))


def test_float16_export_is_close_and_checksummed(tmp_path: Path) -> None:
    original = _vae_model(tmp_path / "trained")
    manifest = export_for_inference(tmp_path / "trained", tmp_path / "fp16", model_id="tiny-fp16")
    assert manifest.weights_dtype == "float16" and manifest.id == "tiny-fp16"
    assert manifest.weights_sha256 == sha256_hex(tmp_path / "fp16" / "model.pt")
    exported = load_model(tmp_path / "fp16").network
    batch = torch.randn(1, 4, 32, 32, 32)
    with torch.inference_mode():
        difference = (segmentation_logits(exported, batch) - segmentation_logits(original, batch)).abs().max()
    assert float(difference) < 0.05
