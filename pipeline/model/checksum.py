"""The weights file's checksum against its manifest, without torch.

Why apart from ``weights``: the node's own process (the dashboard's model page, ``/ready``)
verifies models too, and it never imports torch; the workers' loaders
(``segnode.pipeline.model.weights``) use the same functions, so there is one checksum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from segnode.pipeline.model.errors import CorruptModelError
from segnode.pipeline.model.manifest import ModelManifest


def sha256_hex(source: bytes | Path) -> str:
    """Hex sha256 of bytes, or of a file read in chunks (weights may be hundreds of MB)."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    return hashlib.sha256(source).hexdigest()


def weights_file(folder: Path, manifest: ModelManifest) -> Path:
    path = folder / manifest.weights_file
    if not path.is_file():
        raise CorruptModelError(
            f"model {manifest.id}: weights file {path} is missing; re-import the model"
        )
    return path


def check_sha256(manifest: ModelManifest, path: Path, actual: str) -> None:
    if actual != manifest.weights_sha256:
        raise CorruptModelError(
            f"model {manifest.id}: checksum mismatch for {path}: the manifest says sha256 "
            f"{manifest.weights_sha256}, the file has {actual}; the file is damaged or is not "
            f"the weights this manifest describes: re-import the model from its original source"
        )


def verify_weights_file(folder: Path, manifest: ModelManifest) -> str:
    """The weights file's sha256, after it matched the manifest's (nothing is deserialised).

    Raises:
        CorruptModelError: the file is missing or its checksum differs (both are named).
    """
    path = weights_file(folder, manifest)
    actual = sha256_hex(path)
    check_sha256(manifest, path, actual)
    return actual
