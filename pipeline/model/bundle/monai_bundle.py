"""Read a MONAI bundle (folder or .zip) into a segnode manifest, without running its code.

A bundle (MONAI "bundle specification") holds ``configs/metadata.json`` (names of the
input and output channels under ``network_data_format``), ``configs/inference.json``
(the network under ``network_def``) and ``models/model.pt`` (the state_dict). What the
node needs from them is data: the architecture's hyperparameters, which sequence feeds
which channel, which region each output is. The MONAI model zoo's
``brats_mri_segmentation`` bundle, for example, takes T1c, T1, T2, FLAIR and outputs
TC, WT, ET, unlike segnode's own order; the manifest records that, so such weights run
without code changes.

Why no ``monai.bundle.ConfigParser``: it evaluates ``$`` expressions, i.e. runs Python
from the bundle. This reader resolves ``@`` references and refuses expressions.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from segnode.pipeline.model.bundle.channel_names import input_role, output_region
from segnode.pipeline.model.bundle.network_def import (
    architecture_from_network_def,
    resolve_references,
)
from segnode.pipeline.model.checksum import sha256_hex
from segnode.pipeline.model.errors import BundleImportError
from segnode.pipeline.model.manifest import ModelManifest
from segnode.pipeline.model.weights import (
    read_weights,
    state_dict_bytes,
    weights_dtype,
)
from segnode.vocabulary import NESTED_REGION_KEYS

log = logging.getLogger(__name__)

METADATA = "metadata"
NETWORK_CONFIGS = ("inference", "train")
"""Configs searched for ``network_def``, in order."""
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
WEIGHTS = PurePosixPath("models/model.pt")
NOT_CLINICAL = "Not for clinical use."


@dataclass(frozen=True, slots=True)
class MonaiBundle:
    """A bundle read into segnode terms.

    Attributes:
        root: the bundle folder.
        manifest: its segnode manifest; ``weights_sha256`` is that of ``weights``.
        weights: the bytes to install: the bundle's ``models/model.pt`` unchanged when
            it holds a bare state_dict (so its checksum still matches the publisher's),
            else the unwrapped state_dict re-saved, so that any segnode loader reads it.
        weights_rewritten: whether ``weights`` differ from the bundle's file.
    """

    root: Path
    manifest: ModelManifest
    weights: bytes
    weights_rewritten: bool


@contextmanager
def bundle_folder(path: Path) -> Iterator[tuple[Path, str]]:
    """The bundle's root folder and its name, from a folder or a ``.zip``.

    A zip from the model zoo holds one top-level folder named after the bundle; it is
    extracted into a temporary folder that is removed on exit.

    Raises:
        BundleImportError: not a folder or zip, or no ``configs/metadata.json`` in it.
    """
    if path.is_dir():
        root = _bundle_root(path, shown=path)
        yield root, root.name
        return
    if not (path.is_file() and zipfile.is_zipfile(path)):
        raise BundleImportError(f"{path} is neither a folder nor a .zip file (a MONAI bundle)")
    with tempfile.TemporaryDirectory(prefix="segnode-bundle-") as scratch:
        extracted = Path(scratch)
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                parts = PurePosixPath(member).parts
                if member.startswith(("/", "\\")) or ".." in parts or ":" in member:
                    raise BundleImportError(
                        f"{path}: zip member {member!r} points outside the bundle; refusing it"
                    )
            archive.extractall(extracted)
        root = _bundle_root(extracted, shown=path)
        name = root.name if root != extracted else re.sub(r"_v\d[\w.]*$", "", path.stem)
        yield root, name


def _bundle_root(folder: Path, *, shown: Path) -> Path:
    if _find_config(folder / "configs", METADATA) is not None:
        return folder
    candidates = [
        child
        for child in sorted(folder.iterdir())
        if child.is_dir() and _find_config(child / "configs", METADATA) is not None
    ]
    if len(candidates) != 1:
        raise BundleImportError(
            f"{shown}: no configs/metadata.json at the top or in exactly one top-level "
            f"folder; this is not a MONAI bundle"
        )
    return candidates[0]


def _find_config(configs: Path, stem: str) -> Path | None:
    for suffix in CONFIG_SUFFIXES:
        candidate = configs / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_config(path: Path) -> dict[str, Any]:
    """A JSON or YAML config as a dict; YAML needs PyYAML, which segnode does not pin."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleImportError(f"{path}: not valid JSON: {exc}") from exc
    else:
        try:
            yaml = importlib.import_module("yaml")
        except ModuleNotFoundError as exc:
            raise BundleImportError(
                f"{path} is YAML and PyYAML is not installed; convert the config to JSON "
                f"(same content, configs/{path.stem}.json) or install pyyaml"
            ) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BundleImportError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise BundleImportError(f"{path}: expected a mapping at the top level")
    return loaded


def _network_def(root: Path) -> tuple[Mapping[str, Any], dict[str, Any], Path]:
    for stem in NETWORK_CONFIGS:
        path = _find_config(root / "configs", stem)
        if path is None:
            continue
        config = _read_config(path)
        for key in ("network_def", "network"):
            value = resolve_references(config.get(key), config, where=f"{path}: {key}")
            if isinstance(value, Mapping) and "_target_" in value:
                return value, config, path
    raise BundleImportError(
        f"{root}: no network_def (with a _target_) in configs/inference.* or configs/train.*; "
        f"cannot tell which network the weights belong to"
    )


def _channel_names(section: object, *, what: str) -> list[str] | None:
    """``channel_def`` of the one input (``image``) or output (``pred``), in channel order."""
    if not isinstance(section, Mapping) or not section:
        return None
    entry = section.get("image" if what == "input" else "pred")
    if entry is None and len(section) == 1:
        entry = next(iter(section.values()))
    channel_def = entry.get("channel_def") if isinstance(entry, Mapping) else None
    if not isinstance(channel_def, Mapping) or not channel_def:
        return None
    try:
        indexed = sorted((int(key), value) for key, value in channel_def.items())
    except ValueError as exc:
        raise BundleImportError(f"{what} channel_def keys must be channel numbers: {exc}") from exc
    if [index for index, _ in indexed] != list(range(len(indexed))):
        raise BundleImportError(
            f"{what} channel_def numbers channels {[i for i, _ in indexed]}; expected 0..n-1"
        )
    return [str(value) for _, value in indexed]


def _intended_use(metadata: Mapping[str, Any]) -> str:
    text = str(metadata.get("intended_use") or "").strip()
    if not text:
        return f"Research use only. {NOT_CLINICAL}"
    if "not for clinical use" in text.lower():
        return text
    return f"{text.rstrip('. ')}. {NOT_CLINICAL}"


def _training_data(metadata: Mapping[str, Any]) -> str:
    value = metadata.get("training_data") or metadata.get("data_source") or ""
    return value if isinstance(value, str) else json.dumps(value)


def _bundle_transforms(config: Mapping[str, Any]) -> list[str]:
    preprocessing = config.get("preprocessing")
    transforms = preprocessing.get("transforms") if isinstance(preprocessing, Mapping) else None
    if not isinstance(transforms, list):
        return []
    described = []
    for transform in transforms:
        if isinstance(transform, Mapping) and "_target_" in transform:
            options = {k: v for k, v in transform.items() if k not in ("_target_", "keys")}
            described.append(f"{transform['_target_']}{json.dumps(options, sort_keys=True)}")
    return described


def slug(text: str) -> str:
    """A registry id from a bundle name: lower case, runs of other characters as ``-``."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return cleaned[:64] or "bundle"


def read_monai_bundle(
    root: Path,
    name: str,
    *,
    model_id: str | None = None,
    input_channels: Sequence[str] | None = None,
    output_channels: Sequence[str] | None = None,
) -> MonaiBundle:
    """Read a bundle folder into a manifest and the weights to install (writes nothing).

    Args:
        root: the bundle folder (holding ``configs/`` and ``models/``).
        name: the bundle's name (its folder name in the model zoo), for ``source``.
        model_id: registry id; default ``<name>-<version>``.
        input_channels: roles in channel order, overriding the metadata's channel_def
            (each name goes through the same mapping, e.g. ``["T1c", "t1", "t2", "FLAIR"]``).
        output_channels: regions in channel order, overriding the metadata's.

    Raises:
        BundleImportError: missing files, unsupported network or config expressions,
            channel counts that disagree with the network.
        ChannelNameError: a channel name maps to no role or region.
    """
    metadata_path = _find_config(root / "configs", METADATA)
    if metadata_path is None:
        raise BundleImportError(f"{root}: no configs/metadata.json; not a MONAI bundle")
    metadata = _read_config(metadata_path)
    network_def, config, config_path = _network_def(root)
    architecture = architecture_from_network_def(network_def, where=str(config_path))
    data_format = metadata.get("network_data_format")
    data_format = data_format if isinstance(data_format, Mapping) else {}
    version = str(metadata.get("version") or "0")
    where = f"bundle {name} {version}"

    input_names = list(
        input_channels or _channel_names(data_format.get("inputs"), what="input") or []
    )
    output_names = list(
        output_channels or _channel_names(data_format.get("outputs"), what="output") or []
    )
    for names, what, override in (
        (input_names, "input", "--input-channels"),
        (output_names, "output", "--output-channels"),
    ):
        if not names:
            raise BundleImportError(
                f"{where}: metadata.json has no network_data_format {what}s channel_def; "
                f"give the channel order explicitly ({override})"
            )
    roles = tuple(
        input_role(n, where=f"input channel {i} of {where}") for i, n in enumerate(input_names)
    )
    regions = tuple(
        output_region(n, where=f"output channel {i} of {where}") for i, n in enumerate(output_names)
    )
    if len(set(roles)) != len(roles) or len(roles) != architecture.in_channels:
        raise BundleImportError(
            f"{where}: input channels {input_names} map to roles {list(roles)}; the network "
            f"takes {architecture.in_channels} channels, each a different sequence"
        )
    if (
        sorted(regions) != sorted(NESTED_REGION_KEYS)
        or architecture.out_channels != len(NESTED_REGION_KEYS)
    ):
        raise BundleImportError(
            f"{where}: output channels {output_names} map to {list(regions)} and the network "
            f"has {architecture.out_channels} outputs; segnode needs exactly wt, tc and et once"
        )

    weights = root / WEIGHTS
    if not weights.is_file():
        raise BundleImportError(
            f"{where}: no {WEIGHTS} (the state_dict); a TorchScript model.ts alone is not supported"
        )
    data = weights.read_bytes()
    state, bare = read_weights(data, where=where)
    dtype = weights_dtype(state, where=where)
    if not bare:
        log.info(
            "bundle weights unwrapped to a bare state_dict",
            extra={"bundle": name, "version": version, "bundle_sha256": sha256_hex(data)},
        )
        data = state_dict_bytes(state)

    transforms = _bundle_transforms(config)
    if transforms and not any(
        t.startswith("NormalizeIntensityd")
        and '"channel_wise": true' in t
        and '"nonzero": true' in t
        for t in transforms
    ):
        log.warning(
            "bundle preprocessing differs from the node's z-score over non-zero voxels",
            extra={"bundle": name, "version": version, "transforms": transforms},
        )
    metrics = metadata.get("eval_metrics")
    try:
        manifest = ModelManifest(
            id=model_id or slug(f"{name}-{version}"),
            name=str(metadata.get("name") or name),
            version=version,
            architecture=architecture,
            input_channels=roles,
            output_channels=regions,
            preprocessing={
                **ModelManifest.model_fields["preprocessing"].get_default(),
                "bundle_preprocessing": transforms,
            },
            weights_file=WEIGHTS.name,
            weights_sha256=sha256_hex(data),
            weights_dtype=dtype,
            training_data=_training_data(metadata),
            metrics={"reported_by_bundle": dict(metrics)} if isinstance(metrics, Mapping) else {},
            intended_use=_intended_use(metadata),
            source=f"monai-bundle:{name} {version}",
        )
    except ValidationError as exc:
        raise BundleImportError(f"{where}: cannot describe it as a segnode model: {exc}") from exc
    return MonaiBundle(root=root, manifest=manifest, weights=data, weights_rewritten=not bare)
