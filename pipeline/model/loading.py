"""Load a model folder (``manifest.json`` + weights), refusing weights that fail the checksum.

Why the checksum: the job record names the model by id and sha256, so a result can be traced
to exact weights; a truncated copy or a file swapped behind the manifest's back must fail loudly
instead of segmenting with the wrong network. The bytes that are hashed are the bytes that are
loaded (read once), so nothing can change the file between the check and the load.

Errors come from the model error tree (``segnode.pipeline.model.errors``) that the model registry
uses too. The registry (id lookup, installed models) can take this over; this module knows
nothing about ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import ValidationError

from segnode.pipeline.model.errors import (
    CorruptModelError,
    InvalidManifestError,
    WeightsMismatchError,
)
from segnode.pipeline.model.manifest import MANIFEST_FILE, ModelManifest
from segnode.pipeline.model.network import build_network

MANIFEST_NAME = MANIFEST_FILE


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(folder: Path) -> ModelManifest:
    """The folder's manifest, validated; a clear error instead of a pydantic traceback."""
    if not folder.is_dir():
        raise InvalidManifestError(f"model folder {folder} does not exist or is not a folder")
    if not (folder / MANIFEST_NAME).is_file():
        raise InvalidManifestError(f"model folder {folder} has no {MANIFEST_NAME}")
    try:
        manifest = ModelManifest.read(folder)
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidManifestError(
            f"{folder / MANIFEST_NAME} is not a valid model manifest: {exc}"
        ) from exc
    architecture = manifest.architecture
    if architecture.in_channels != len(manifest.input_channels):
        raise InvalidManifestError(
            f"model {manifest.id}: the architecture takes {architecture.in_channels} input "
            f"channels but input_channels lists {len(manifest.input_channels)}"
        )
    if architecture.out_channels != len(manifest.output_channels):
        raise InvalidManifestError(
            f"model {manifest.id}: the architecture gives {architecture.out_channels} output "
            f"channels but output_channels lists {len(manifest.output_channels)}"
        )
    return manifest


def _weights_path(folder: Path, manifest: ModelManifest) -> Path:
    path = (folder / manifest.weights_file).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise InvalidManifestError(
            f"model {manifest.id}: weights_file {manifest.weights_file!r} points outside the folder"
        )
    if not path.is_file():
        raise CorruptModelError(f"model {manifest.id}: weights file {path} is missing")
    return path


def load_verified_weights(folder: Path, manifest: ModelManifest) -> dict[str, torch.Tensor]:
    """The state dict, after its sha256 matched the manifest's.

    Raises:
        CorruptModelError: the file is missing or its checksum differs from the manifest's.
        WeightsMismatchError: the file is not a PyTorch state dict of tensors.
    """
    path = _weights_path(folder, manifest)
    data = path.read_bytes()
    actual = sha256_hex(data)
    if actual != manifest.weights_sha256:
        raise CorruptModelError(
            f"model {manifest.id}: checksum mismatch for {manifest.weights_file}: the manifest "
            f"says sha256 {manifest.weights_sha256}, the file has {actual}; the file is corrupt "
            "or not the weights this manifest describes: reinstall the model"
        )
    try:
        # weights_only: a state dict is tensors; refusing arbitrary pickles is cheap safety.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise WeightsMismatchError(
            f"model {manifest.id}: {path} is not a PyTorch weights file: {exc}"
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise WeightsMismatchError(
            f"model {manifest.id}: {path} does not hold a state dict of tensors"
        )
    return dict(state)


def load_model_folder(
    folder: Path, *, device: torch.device | None = None
) -> tuple[ModelManifest, torch.nn.Module]:
    """Manifest and network (eval mode, float32) of a model folder.

    Args:
        folder: holds ``manifest.json`` and the weights file it names.
        device: where to put the network (default CPU).

    Raises:
        InvalidManifestError: no folder, no or an invalid ``manifest.json``.
        CorruptModelError: weights missing, or their sha256 differs from the manifest's.
        WeightsMismatchError: the weights do not fit the manifest's architecture.
    """
    manifest = read_manifest(folder)
    state = load_verified_weights(folder, manifest)
    network = build_network(manifest.architecture)
    try:
        # float16 weights are copied into the float32 parameters here.
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsMismatchError(
            f"model {manifest.id}: weights do not fit the manifest's architecture "
            f"({manifest.architecture.name}, {manifest.architecture.init_filters} filters): {exc}"
        ) from exc
    network.eval()
    if device is not None:
        network.to(device)
    return manifest, network
