"""The models a node has, read without torch: ids, manifests, model cards, checksums.

Why apart from the registry: the node's own process lists and verifies models (the
dashboard's model page, ``/ready``) and never imports torch; loading and importing models
(``segnode.pipeline.model.registry.ModelRegistry``, a catalog that also loads) run in the
workers and the command line.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
from pathlib import Path

from segnode.pipeline.model.checksum import verify_weights_file
from segnode.pipeline.model.errors import InvalidManifestError, ModelNotFoundError
from segnode.pipeline.model.manifest import MANIFEST_FILE, ModelManifest

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
BUILTIN_MODELS = Path(__file__).with_name("builtin")
"""Models shipped with segnode (the reference weights and their model card)."""


class ModelCatalog:
    """The models under one root folder (normally ``<data_dir>/models``) and the built-in ones."""

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
                    and (child / MANIFEST_FILE).is_file()
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
        folder = next((c for c in candidates if (c / MANIFEST_FILE).is_file()), candidates[0])
        if not ID_PATTERN.match(model_id) or not (folder / MANIFEST_FILE).is_file():
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
        manifest = ModelManifest.read(folder)
        if manifest.id != model_id:
            raise InvalidManifestError(
                f"{folder / MANIFEST_FILE}: manifest id {manifest.id!r} differs from the folder "
                f"name {model_id!r}; rename one of them"
            )
        return manifest

    def verify(self, model_id: str) -> str:
        """Check the weights file against the manifest's sha256; returns the checksum.

        Raises:
            CorruptModelError: missing file or different checksum (both named).
        """
        return verify_weights_file(self.folder(model_id), self.get(model_id))



def node_catalog(data_dir: Path) -> ModelCatalog:
    """The models a node has: ``<data_dir>/models`` plus the built-in models."""
    return ModelCatalog(Path(data_dir) / "models", builtin_roots=(BUILTIN_MODELS,))
