"""The model registry: one folder per model id, each with ``manifest.json`` and the weights.

Why a folder and not a database: a site copies, backs up and audits models as files,
and a folder is exactly what a model is here (manifest + weights). Models are added by
staging a complete copy under a hidden name inside the registry, verifying the copy
(checksum, and that the weights load into the declared network), then renaming it into
place; a half-copied or unverified model is therefore never visible under its id.
Nothing is overwritten: jobs record the model id and sha256 they ran with.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from segnode.pipeline.model.bundle.monai_bundle import bundle_folder, read_monai_bundle
from segnode.pipeline.model.errors import (
    CorruptModelError,
    InvalidManifestError,
    ModelExistsError,
    ModelNotFoundError,
)
from segnode.pipeline.model.manifest import MANIFEST_FILE, ModelManifest
from segnode.pipeline.model.weights import (
    network_from_state_dict,
    read_state_dict,
    sha256_of_bytes,
    sha256_of_file,
)

log = logging.getLogger(__name__)

MANIFEST = MANIFEST_FILE
BUNDLE_PROVENANCE = "monai_bundle"
"""Where an imported bundle's configs/ and docs/ (licences, README) are kept."""
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


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


def _read_manifest(folder: Path) -> ModelManifest:
    try:
        manifest = ModelManifest.read(folder)
    except FileNotFoundError as exc:
        raise InvalidManifestError(f"{folder}: no {MANIFEST}; not a segnode model folder") from exc
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise InvalidManifestError(f"{folder / MANIFEST}: invalid manifest: {exc}") from exc
    if Path(
        manifest.weights_file
    ).name != manifest.weights_file or manifest.weights_file.startswith("."):
        raise InvalidManifestError(
            f"{folder / MANIFEST}: weights_file {manifest.weights_file!r} must be a plain file "
            f"name inside the model folder"
        )
    architecture = manifest.architecture
    if (architecture.in_channels, architecture.out_channels) != (
        len(manifest.input_channels),
        len(manifest.output_channels),
    ):
        raise InvalidManifestError(
            f"{folder / MANIFEST}: the network has {architecture.in_channels} inputs and "
            f"{architecture.out_channels} outputs, but the manifest names "
            f"{len(manifest.input_channels)} input and {len(manifest.output_channels)} output channels"
        )
    return manifest


def _load_folder(folder: Path, manifest: ModelManifest, device: torch.device | str) -> LoadedModel:
    """Checksum first, then ``torch.load`` of the same bytes, then fit to the network."""
    where = f"model {manifest.id}"
    path = folder / manifest.weights_file
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptModelError(
            f"{where}: weights file {path} is missing; re-import the model"
        ) from exc
    actual = sha256_of_bytes(data)
    if actual != manifest.weights_sha256:
        raise CorruptModelError(
            f"{where}: weights file {path} has sha256 {actual}, but the manifest expects "
            f"{manifest.weights_sha256}; the file is damaged or was replaced. Re-import the "
            f"model from its original source"
        )
    state = read_state_dict(data, where=where)
    network = network_from_state_dict(manifest.architecture, state, where=where)
    network.to(device).eval()
    return LoadedModel(manifest=manifest, network=network, sha256=actual, path=path)


class ModelRegistry:
    """The models under one root folder (normally ``<data_dir>/models``)."""

    def __init__(self, root: Path, builtin_roots: Sequence[Path] = ()) -> None:
        """Args:
        root: where imported models go (normally ``<data_dir>/models``).
        builtin_roots: read-only folders of models shipped with segnode (the
            reference weights); an imported model with the same id wins.
        """
        self._root = Path(root)
        self._builtin = tuple(Path(folder) for folder in builtin_roots)

    @property
    def root(self) -> Path:
        return self._root

    def ids(self) -> builtins.list[str]:
        """Registered ids (imported and built in), sorted; hidden (staging) folders are not models."""
        found: set[str] = set()
        for root in (self._root, *self._builtin):
            if root.is_dir():
                found.update(
                    child.name
                    for child in root.iterdir()
                    if child.is_dir()
                    and not child.name.startswith(".")
                    and (child / MANIFEST).is_file()
                )
        return sorted(found)

    def list(self) -> builtins.list[ModelManifest]:
        """Every registered manifest, by id.

        Raises:
            InvalidManifestError: a model folder's manifest is broken (named, so it can
                be fixed or removed; a broken model is never skipped silently).
        """
        return [self.get(model_id) for model_id in self.ids()]

    def folder(self, model_id: str) -> Path:
        """The folder of a registered model.

        Raises:
            ModelNotFoundError: unknown id; the message lists the registered ones.
        """
        candidates = [root / model_id for root in (self._root, *self._builtin)]
        folder = next((c for c in candidates if (c / MANIFEST).is_file()), candidates[0])
        if not _ID.match(model_id) or not (folder / MANIFEST).is_file():
            available = ", ".join(self.ids()) or "none"
            raise ModelNotFoundError(
                f"no model {model_id!r} in registry {self._root} (available: {available}); "
                f"add one with `segnode models import PATH`"
            )
        return folder

    def get(self, model_id: str) -> ModelManifest:
        """The manifest of a registered model.

        Raises:
            ModelNotFoundError: unknown id (lists the available ids).
            InvalidManifestError: the manifest is broken or names another id.
        """
        folder = self.folder(model_id)
        manifest = _read_manifest(folder)
        if manifest.id != model_id:
            raise InvalidManifestError(
                f"{folder / MANIFEST}: manifest id {manifest.id!r} differs from the folder "
                f"name {model_id!r}; rename one of them"
            )
        return manifest

    def verify(self, model_id: str) -> str:
        """Check the weights file against the manifest's sha256; returns the checksum.

        Raises:
            CorruptModelError: missing file or different checksum (both named).
        """
        manifest = self.get(model_id)
        path = self.folder(model_id) / manifest.weights_file
        if not path.is_file():
            raise CorruptModelError(f"model {model_id}: weights file {path} is missing")
        actual = sha256_of_file(path)
        if actual != manifest.weights_sha256:
            raise CorruptModelError(
                f"model {model_id}: weights file {path} has sha256 {actual}, but the manifest "
                f"expects {manifest.weights_sha256}; re-import the model"
            )
        return actual

    def load(self, model_id: str, device: torch.device | str = "cpu") -> LoadedModel:
        """The verified network of a model, in eval mode on ``device``.

        The weights' sha256 is checked before ``torch.load(weights_only=True)`` reads
        them; float16 weights are loaded into a float32 network.

        Raises:
            ModelNotFoundError: unknown id.
            CorruptModelError: checksum differs from the manifest (both are named).
            WeightsMismatchError: the weights do not fit the declared architecture.
        """
        manifest = self.get(model_id)
        loaded = _load_folder(self.folder(model_id), manifest, device)
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
        manifest = _read_manifest(Path(path))
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
        _load_folder(staging, _read_manifest(staging), "cpu")
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


BUILTIN_MODELS = Path(__file__).with_name("builtin")
"""Models shipped with segnode (the reference weights and their model card)."""


def node_registry(data_dir: Path) -> ModelRegistry:
    """The registry a node uses: ``<data_dir>/models`` plus the built-in models."""
    return ModelRegistry(Path(data_dir) / "models", builtin_roots=(BUILTIN_MODELS,))
