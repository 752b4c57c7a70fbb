"""Which inference engine runs a loaded network: PyTorch, or OpenVINO on the CPU.

The rules (``[model] backend`` in node.toml):

* ``"auto"`` (default): OpenVINO when the network runs on the CPU and its export agrees with
  PyTorch on the probe; PyTorch otherwise (a GPU, or an export OpenVINO refuses), with the
  reason logged and recorded.
* ``"pytorch"``: PyTorch always (the reference; what every GPU runs).
* ``"openvino"``: OpenVINO, or an error when it cannot be used: a site that asked for it
  wants to know it is not getting it.

Why a policy module of its own: the node, ``segnode predict`` and the benchmarks must pick
the same engine for the same configuration, as they pick the same device
(``segnode.pipeline.model.device``). The choice is part of the result's provenance: the job
records the backend, its version and the export's checksum beside the weights' checksum.

OpenVINO is imported only when it is chosen, so PyTorch-only paths never load it.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch

from segnode.pipeline.model.errors import BackendError
from segnode.pipeline.model.registry import LoadedModel

log = logging.getLogger(__name__)


class Backend(StrEnum):
    AUTO = "auto"
    PYTORCH = "pytorch"
    OPENVINO = "openvino"


@dataclass(frozen=True)
class BackendChoice:
    """The engine that runs a model, for the job's provenance."""

    name: Backend
    version: str
    export_sha256: str | None = None
    """sha256 of the exported network (OpenVINO IR) the engine ran; None for PyTorch."""
    reason: str = ""
    """Why ``auto`` chose this engine (empty when it was asked for by name)."""

    def as_record(self) -> dict[str, str]:
        record = {"backend": self.name.value, "backend_version": self.version}
        if self.export_sha256:
            record["export_sha256"] = self.export_sha256
        if self.reason:
            record["backend_reason"] = self.reason
        return record


def pytorch_choice(reason: str = "") -> BackendChoice:
    return BackendChoice(Backend.PYTORCH, torch.__version__, reason=reason)


def on_backend(
    loaded: LoadedModel, requested: Backend | str, device: torch.device, cache_dir: Path
) -> tuple[LoadedModel, BackendChoice]:
    """``loaded`` as it will run on the requested backend, and what was chosen.

    Call straight after loading, before the network first runs (see
    ``segnode.pipeline.model.openvino_network``). OpenVINO uses as many threads as torch.

    Raises:
        BackendError: ``openvino`` asked for by name and it cannot be used.
    """
    backend = Backend(requested)
    if backend is Backend.PYTORCH:
        return loaded, pytorch_choice()
    if device.type != "cpu":
        if backend is Backend.OPENVINO:
            raise BackendError(
                f"[model] backend = \"openvino\" runs on the CPU, but the device is {device}: "
                "use backend auto or pytorch with a GPU, or device cpu"
            )
        return loaded, pytorch_choice(f"{device.type} device")
    try:
        return _openvino(loaded, cache_dir)
    except (BackendError, ImportError) as exc:
        if backend is Backend.OPENVINO:
            raise BackendError(f"model {loaded.manifest.id}: {exc}") from exc
        log.warning(
            "OpenVINO not used, PyTorch runs the model",
            extra={"model_id": loaded.manifest.id, "reason": str(exc)},
        )
        return loaded, pytorch_choice(f"OpenVINO refused: {exc}")


def _openvino(loaded: LoadedModel, cache_dir: Path) -> tuple[LoadedModel, BackendChoice]:
    module = importlib.import_module("segnode.pipeline.model.openvino_network")
    in_channels = loaded.manifest.architecture.in_channels
    export = module.cached_export(loaded.network, in_channels, cache_dir, loaded.sha256)
    network = module.OpenVinoNetwork(export, threads=torch.get_num_threads())
    difference = module.probe_difference(loaded.network, network, in_channels)
    if difference > module.MAX_PROBE_DIFFERENCE:
        raise BackendError(
            f"the OpenVINO export differs from PyTorch by {difference:.2e} in probability on "
            f"the probe (limit {module.MAX_PROBE_DIFFERENCE:.0e})"
        )
    choice = BackendChoice(Backend.OPENVINO, module.OPENVINO_VERSION, export.sha256)
    log.info(
        "model runs on OpenVINO",
        extra={"model_id": loaded.manifest.id, "export_sha256": export.sha256, "probe_difference": difference},
    )
    return dataclasses.replace(loaded, network=network), choice
