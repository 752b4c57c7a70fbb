"""A MONAI config's ``network_def`` as an :class:`ArchitectureSpec`, read as data.

Only SegResNet and SegResNetVAE are accepted, and only with the options
:func:`segnode.pipeline.model.network.build_network` reproduces; any other option with a
non-default value is refused by name, because a network built without it would load
the weights and still compute something else. Missing options take MONAI's own
defaults (e.g. ``init_filters`` 8), as MONAI would when it instantiates the bundle.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from monai.networks.nets.segresnet import SegResNet, SegResNetVAE
from pydantic import ValidationError

from segnode.pipeline.model.errors import BundleImportError
from segnode.pipeline.model.manifest import ArchitectureSpec

NETWORKS: dict[str, Any] = {"SegResNet": SegResNet, "SegResNetVAE": SegResNetVAE}
META_KEYS = frozenset({"_target_", "_requires_", "_disabled_", "_desc_", "_mode_"})
SPEC_KEYS = frozenset(
    {"init_filters", "in_channels", "out_channels", "dropout_prob", "blocks_down", "blocks_up"}
)
_MAX_REFERENCE_DEPTH = 32


def resolve_references(value: object, config: Mapping[str, Any], *, where: str) -> object:
    """``value`` with MONAI ``@id`` references (``#`` separates levels) replaced.

    Raises:
        BundleImportError: a ``$`` expression or ``%`` macro (this reader does not run
            bundle code or open other files), a dangling reference, or a cycle.
    """
    return _resolve(value, config, where=where, depth=0)


def _resolve(value: object, config: Mapping[str, Any], *, where: str, depth: int) -> object:
    if depth > _MAX_REFERENCE_DEPTH:
        raise BundleImportError(f"{where}: references nest too deeply (a cycle?)")
    if isinstance(value, Mapping):
        return {k: _resolve(v, config, where=f"{where}#{k}", depth=depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, config, where=where, depth=depth) for v in value]
    if not isinstance(value, str):
        return value
    if value.startswith(("$", "%")):
        raise BundleImportError(
            f"{where}: {value!r} is a MONAI expression or macro; segnode does not execute "
            f"bundle code, so write the literal value in the config"
        )
    if not value.startswith("@"):
        return value
    target: object = config
    for part in value[1:].replace("::", "#").split("#"):
        if isinstance(target, Mapping) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            raise BundleImportError(f"{where}: reference {value!r} names nothing in the config")
    return _resolve(target, config, where=where, depth=depth + 1)


def _defaults(network: Any) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(network.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _norm_groups(options: Mapping[str, Any], *, where: str) -> int:
    """GroupNorm's group count, from ``norm`` (str or ``[name, {args}]``) or ``norm_name``."""
    groups = options.get("num_groups", 8)
    norm = options.get("norm_name") or options.get("norm", ("GROUP", {"num_groups": 8}))
    if isinstance(norm, str):
        name, arguments = norm, {}
    elif isinstance(norm, list | tuple) and len(norm) == 2 and isinstance(norm[1], Mapping):
        name, arguments = norm[0], dict(norm[1])
    else:
        raise BundleImportError(f"{where}: norm {norm!r} is not a name or [name, arguments]")
    if str(name).lower() != "group":
        raise BundleImportError(f"{where}: norm {norm!r} is not supported (only GroupNorm)")
    if set(arguments) - {"num_groups"}:
        raise BundleImportError(f"{where}: norm arguments {arguments} are not supported")
    return int(arguments.get("num_groups", groups))


def _check_default(
    options: Mapping[str, Any], key: str, accepted: tuple[object, ...], *, where: str
) -> None:
    if key in options and options[key] not in accepted:
        raise BundleImportError(
            f"{where}: {key}={options[key]!r} is not supported (segnode builds the network "
            f"with {key}={accepted[0]!r})"
        )


def architecture_from_network_def(
    network_def: Mapping[str, Any], *, where: str
) -> ArchitectureSpec:
    """The :class:`ArchitectureSpec` a resolved ``network_def`` describes.

    Args:
        network_def: the mapping with ``_target_`` (references already resolved).
        where: the config file, for messages.

    Raises:
        BundleImportError: another network, 2D, or an option segnode does not build.
    """
    target = str(network_def.get("_target_", "")).rsplit(".", 1)[-1]
    if target not in NETWORKS:
        raise BundleImportError(
            f"{where}: network_def _target_ {network_def.get('_target_')!r} is not supported; "
            f"segnode runs {' or '.join(NETWORKS)}"
        )
    options = {k: v for k, v in network_def.items() if k not in META_KEYS}
    where = f"{where}: network_def {target}"
    defaults = _defaults(NETWORKS[target])
    known = set(defaults) | {"input_image_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BundleImportError(f"{where}: unknown option(s) {unknown} for {target}")
    _check_default(options, "spatial_dims", (3,), where=where)
    _check_default(options, "use_conv_final", (True,), where=where)
    _check_default(options, "upsample_mode", ("nontrainable", "NONTRAINABLE"), where=where)
    _check_default(options, "vae_estimate_std", (False,), where=where)
    _check_default(options, "vae_nz", (256,), where=where)
    act = options.get("act", "RELU")
    act_name = act if isinstance(act, str) else act[0] if isinstance(act, list | tuple) else ""
    if str(act_name).lower() != "relu":
        raise BundleImportError(f"{where}: act {act!r} is not supported (only ReLU)")
    values = {key: options.get(key, defaults.get(key)) for key in SPEC_KEYS}
    if values["dropout_prob"] is None:
        values["dropout_prob"] = 0.0
    image_size = options.get("input_image_size")
    if target == "SegResNetVAE" and image_size is None:
        raise BundleImportError(f"{where}: SegResNetVAE needs input_image_size")
    try:
        return ArchitectureSpec.model_validate(
            {
                **values,
                "name": target,
                "norm_groups": _norm_groups(options, where=where),
                "vae_input_shape": image_size if target == "SegResNetVAE" else None,
            }
        )
    except (ValidationError, TypeError, ValueError) as exc:
        raise BundleImportError(f"{where}: not a valid architecture: {exc}") from exc
