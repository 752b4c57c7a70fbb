"""Weights files: checksum, safe deserialisation, and fitting a state_dict to a network.

Why the bytes are read once: the checksum is computed over exactly the bytes that
``torch.load`` then parses, so a file replaced between the check and the load cannot
slip through. ``weights_only=True`` keeps a hostile pickle from running code; the
checksum keeps a damaged or swapped file from producing quiet nonsense.

:func:`read_verified_weights` is the checksum gate every loader goes through (the node's
registry, ``segnode predict``, ``train --init-weights``, ensemble packing);
:func:`sha256_hex` is the one checksum (the manifest's ``weights_sha256``).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from segnode.pipeline.model.checksum import (
    check_sha256,
    sha256_hex,
    weights_file,
)
from segnode.pipeline.model.errors import (
    InvalidManifestError,
    WeightsMismatchError,
)
from segnode.pipeline.model.manifest import ArchitectureSpec, ModelManifest
from segnode.pipeline.model.network import build_network

StateDict = dict[str, torch.Tensor]

WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "network", "net")
"""Keys under which training code commonly nests the network's state_dict (MONAI's
CheckpointSaver writes ``{"model": ..., "optimizer": ...}`` when it saves more than one
object, and the bare state_dict when it saves only the network)."""

_SHOWN = 3
"""How many offending parameter names a mismatch message quotes per kind."""


@dataclass(frozen=True, slots=True)
class VerifiedWeights:
    """A model folder's state_dict, read from bytes whose sha256 matched the manifest's."""

    state: StateDict
    sha256: str
    path: Path
    """The weights file."""


def read_verified_weights(folder: Path, manifest: ModelManifest) -> VerifiedWeights:
    """The state_dict of a model folder's weights, checksum first, from the same bytes.

    Args:
        folder: the model folder (``manifest.weights_file`` is a plain name inside it).
        manifest: its manifest (``ModelManifest.read``).

    Raises:
        CorruptModelError: the file is missing or its checksum differs (both are named).
        WeightsMismatchError: the file is not a PyTorch state_dict of tensors.
    """
    path = weights_file(folder, manifest)
    data = path.read_bytes()
    actual = sha256_hex(data)
    check_sha256(manifest, path, actual)
    state = read_state_dict(data, where=f"model {manifest.id}")
    return VerifiedWeights(state=state, sha256=actual, path=path)


def _is_tensor_mapping(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(
            isinstance(key, str) and isinstance(item, torch.Tensor) for key, item in value.items()
        )
    )


def read_state_dict(data: bytes, *, where: str) -> StateDict:
    """Deserialise a weights file into a flat ``{name: tensor}`` state_dict.

    Accepts a bare state_dict, one nested under a key of :data:`WRAPPER_KEYS`, and
    DistributedDataParallel's ``module.`` prefix.

    Args:
        data: the file's bytes (already checksum-verified by the caller).
        where: names the model or file in error messages.

    Raises:
        WeightsMismatchError: not a torch file, a pickle that needs more than tensors
            (``weights_only=True`` refuses it), or no state_dict inside.
    """
    return read_weights(data, where=where)[0]


def read_weights(data: bytes, *, where: str) -> tuple[StateDict, bool]:
    """Like :func:`read_state_dict`, and whether the file already held the bare state_dict
    (``False`` when it had to be unwrapped or its ``module.`` prefix stripped)."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsMismatchError(
            f"{where}: the weights file is not a PyTorch state_dict that loads with "
            f"weights_only=True ({type(exc).__name__}: {str(exc)[:300]}); save it with "
            f"torch.save(network.state_dict(), path)"
        ) from exc
    state: object = loaded
    if not _is_tensor_mapping(state) and isinstance(state, Mapping):
        nested = [state[key] for key in WRAPPER_KEYS if _is_tensor_mapping(state.get(key))]
        state = nested[0] if nested else state
    if not _is_tensor_mapping(state) or not isinstance(state, Mapping):
        kind = (
            f"a mapping with keys {sorted(map(str, loaded))[:8]}"
            if isinstance(loaded, Mapping)
            else type(loaded).__name__
        )
        raise WeightsMismatchError(
            f"{where}: the weights file holds {kind}, not a state_dict of tensors "
            f"(also looked under {', '.join(WRAPPER_KEYS)})"
        )
    names = [str(name) for name in state]
    prefix = "module."
    if all(name.startswith(prefix) for name in names):
        return {name.removeprefix(prefix): state[name] for name in names}, False
    return {name: state[name] for name in names}, state is loaded


def state_dict_bytes(state: StateDict) -> bytes:
    """``torch.save`` of a bare state_dict, the form every segnode loader reads."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def weights_dtype(state: StateDict, *, where: str) -> Literal["float32", "float16"]:
    """The storage dtype of the floating-point tensors (all must agree).

    Raises:
        WeightsMismatchError: mixed precisions, or one other than float32/float16.
    """
    dtypes = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
    if dtypes == {torch.float16}:
        return "float16"
    if dtypes <= {torch.float32}:
        return "float32"
    raise WeightsMismatchError(
        f"{where}: weights are stored as {sorted(str(d) for d in dtypes)}; only float32 or "
        f"float16 throughout is supported (convert with tensor.float() before saving)"
    )


def _describe(spec: ArchitectureSpec) -> str:
    return (
        f"{spec.name}(init_filters={spec.init_filters}, blocks_down={list(spec.blocks_down)}, "
        f"blocks_up={list(spec.blocks_up)}, in_channels={spec.in_channels}, "
        f"out_channels={spec.out_channels}, norm_groups={spec.norm_groups})"
    )


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def network_from_state_dict(
    spec: ArchitectureSpec, state: StateDict, *, where: str
) -> torch.nn.Module:
    """Build the declared network and load ``state`` into it, in float32.

    Why float32 always: float16 halves the file, but CPU inference in float16 is slow
    and lossy, and GPU inference casts itself (autocast) where it pays.

    Raises:
        InvalidManifestError: the architecture cannot be built.
        WeightsMismatchError: parameters missing, unexpected or of the wrong shape; the
            message lists examples of each and the declared architecture.
    """
    try:
        network = build_network(spec)
    except (ValueError, TypeError) as exc:
        raise InvalidManifestError(f"{where}: cannot build {_describe(spec)}: {exc}") from exc
    expected = network.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    wrong_shape = [
        f"{name} (file {tuple(state[name].shape)}, network {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{len(items)} {kind}: {_examples(items)}"
            for kind, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of the wrong shape", wrong_shape),
            )
            if items
        ]
        raise WeightsMismatchError(
            f"{where}: the weights do not fit the declared architecture {_describe(spec)}; "
            f"parameters {'; '.join(problems)}. Fix the manifest's architecture (or the "
            f"bundle's network_def) to match how the weights were trained"
        )
    as_float32 = {
        name: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
    }
    network.load_state_dict(as_float32, strict=True)
    return network
