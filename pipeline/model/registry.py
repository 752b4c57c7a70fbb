"""The model registry: one folder per model id, each with ``manifest.json`` and the weights.

Why a folder and not a database: a site copies, backs up and audits models as files,
and a folder is exactly what a model is here (manifest + weights). Models are added by
staging a complete copy under a hidden name inside the registry, verifying the copy
(checksum, and that the weights load into the declared network), then renaming it into
place; a half-copied or unverified model is therefore never visible under its id.
Nothing is overwritten: jobs record the model id and sha256 they ran with.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from segnode.pipeline.model.bundle.monai_bundle import bundle_folder, read_monai_bundle
from segnode.pipeline.model.catalog import BUILTIN_MODELS, ModelCatalog
from segnode.pipeline.model.errors import (
    InvalidManifestError,
    ModelExistsError,
)
from segnode.pipeline.model.manifest import ModelManifest
from segnode.pipeline.model.weights import (
    network_from_state_dict,
    read_verified_weights,
)

log = logging.getLogger(__name__)

BUNDLE_PROVENANCE = "monai_bundle"
"""Where an imported bundle's configs/ and docs/ (licences, README) are kept."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A verified network, ready for inference.

    Attributes:
        manifest: what the network expects and outputs.
        network: the network in eval mode, float32, on the requested device.
        sha256: checksum of the weights bytes that were loaded (equals the manifest's).
        path: the weights file.
    """

    manifest: ModelManifest
    network: torch.nn.Module
    sha256: str
    path: Path


def load_model(folder: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The network of a model folder, verified: the one loader of segnode.

    The node (through :meth:`ModelRegistry.load`), ``segnode predict --model``, ``segnode
    train --init-weights`` and cross-validation all load here, so a model passes the same
    checks whichever command runs it: the manifest (``ModelManifest.read``), the weights'
    sha256 before ``torch.load(weights_only=True)`` reads the same bytes, and a strict fit
    to the declared architecture. float16 weights are loaded into a float32 network.

    Args:
        folder: holds ``manifest.json`` and the weights file it names.
        device: where to put the network (``device.select_device`` chooses it).

    Raises:
        InvalidManifestError: no folder, or no or an invalid ``manifest.json``.
        CorruptModelError: weights missing, or their sha256 differs from the manifest's.
        WeightsMismatchError: the weights do not fit the manifest's architecture.
    """
    manifest = ModelManifest.read(folder)
    weights = read_verified_weights(folder, manifest)
    network = network_from_state_dict(
        manifest.architecture, weights.state, where=f"model {manifest.id}"
    )
    network.to(device).eval()
    return LoadedModel(manifest=manifest, network=network, sha256=weights.sha256, path=weights.path)


class ModelRegistry(ModelCatalog):
    """A :class:`ModelCatalog` that also loads models and adds them (staged, verified, renamed)."""

    def resolve(self, model: str) -> Path:
        """The folder of ``model``: a model folder's path as given, else a registered id.

        Why both: ``segnode predict --model`` and ``train --init-weights`` take either a
        folder (a model just trained) or an id (what the node runs); either way the folder
        then goes through :func:`load_model`.

        Raises:
            ModelNotFoundError: neither a folder nor a registered id.
        """
        path = Path(model)
        return path if path.is_dir() else self.folder(model)

    def load(self, model_id: str, device: torch.device | str = "cpu") -> LoadedModel:
        """The verified network of a registered model, in eval mode on ``device``.

        Raises:
            ModelNotFoundError: unknown id.
            InvalidManifestError: the manifest is broken or names another id.
            CorruptModelError: checksum differs from the manifest (both are named).
            WeightsMismatchError: the weights do not fit the declared architecture.
        """
        self.get(model_id)  # the id must be the manifest's own
        loaded = load_model(self.folder(model_id), device)
        log.info("model loaded", extra={"model_id": model_id, "sha256": loaded.sha256})
        return loaded

    def add_folder(self, path: Path, model_id: str | None = None) -> ModelManifest:
        """Copy a segnode model folder (manifest + weights) into the registry.

        Args:
            path: folder holding ``manifest.json`` and the weights file.
            model_id: register under this id instead of the manifest's.

        Raises:
            InvalidManifestError: missing or invalid manifest.
            ModelExistsError: the id is taken.
            CorruptModelError, WeightsMismatchError: the weights fail verification.
        """
        manifest = ModelManifest.read(Path(path))
        if model_id is not None:
            try:
                manifest = ModelManifest.model_validate({**manifest.model_dump(), "id": model_id})
            except ValidationError as exc:
                raise InvalidManifestError(f"{model_id!r} is not a valid model id: {exc}") from exc
        self._refuse_taken(manifest.id)
        with self._staging() as staging:
            shutil.copytree(path, staging, dirs_exist_ok=True)
            manifest.write(staging)
            self._install(staging, manifest)
        return manifest

    def import_monai_bundle(
        self,
        path: Path,
        model_id: str | None = None,
        *,
        input_channels: Sequence[str] | None = None,
        output_channels: Sequence[str] | None = None,
    ) -> ModelManifest:
        """Register a MONAI bundle (folder or .zip) as a segnode model.

        The bundle's ``models/model.pt`` is copied byte for byte when it is a bare
        state_dict (so its checksum still matches the one its publisher gives); one
        nested in a checkpoint dict, or with DDP's ``module.`` prefix, is re-saved bare so
        that every segnode loader reads it. ``configs/`` and ``docs/`` are kept under
        ``monai_bundle/`` for provenance and licences.

        Args:
            path: the bundle folder or zip.
            model_id: registry id; default ``<bundle name>-<version>``.
            input_channels, output_channels: channel names in order, overriding the
                metadata's ``channel_def`` (for bundles whose metadata lacks them).

        Raises:
            BundleImportError: not a usable bundle (the message says why).
            ChannelNameError: a channel name that maps to no role or region.
            ModelExistsError: the id is taken.
            WeightsMismatchError: the weights do not fit the bundle's network_def.
        """
        with bundle_folder(Path(path)) as (root, name):
            bundle = read_monai_bundle(
                root,
                name,
                model_id=model_id,
                input_channels=input_channels,
                output_channels=output_channels,
            )
            manifest = bundle.manifest
            self._refuse_taken(manifest.id)
            with self._staging() as staging:
                (staging / manifest.weights_file).write_bytes(bundle.weights)
                for part in ("configs", "docs"):
                    if (root / part).is_dir():
                        shutil.copytree(root / part, staging / BUNDLE_PROVENANCE / part)
                manifest.write(staging)
                self._install(staging, manifest)
        return manifest

    def _refuse_taken(self, model_id: str) -> None:
        if (self._root / model_id).exists():
            raise ModelExistsError(
                f"a model {model_id!r} is already in registry {self._root}; choose another id "
                f"(--id) or remove {self._root / model_id} first"
            )

    def _staging(self) -> _Staging:
        self._root.mkdir(parents=True, exist_ok=True)
        return _Staging(Path(tempfile.mkdtemp(prefix=".staging-", dir=self._root)))

    def _install(self, staging: Path, manifest: ModelManifest) -> None:
        """Verify the staged copy, then rename it into place (same filesystem: atomic)."""
        load_model(staging)
        target = self._root / manifest.id
        try:
            staging.rename(target)
        except OSError as exc:  # another import of the same id won the race
            raise ModelExistsError(
                f"could not install model {manifest.id!r} at {target}: {exc}"
            ) from exc
        log.info(
            "model registered",
            extra={
                "model_id": manifest.id,
                "sha256": manifest.weights_sha256,
                "source": manifest.source,
            },
        )


class _Staging:
    """A hidden folder inside the registry, removed unless it was renamed into place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)




def node_registry(data_dir: Path) -> ModelRegistry:
    """The registry a node uses: ``<data_dir>/models`` plus the built-in models."""
    return ModelRegistry(Path(data_dir) / "models", builtin_roots=(BUILTIN_MODELS,))
