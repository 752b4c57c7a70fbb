"""OpenVINO as the CPU backend: a registry network exported to OpenVINO IR and run in its place.

Why: on two CPU cores OpenVINO runs the default model's eight batched TTA flips about 1.5
times faster than PyTorch, with probabilities within ~1e-3 of PyTorch's and label maps at Dice
>= 0.9996 (``bench/backends.py``, docs/benchmarks.md). PyTorch stays the reference: it loads and
checks the weights, it runs on GPUs, and it is the fallback whenever this export is refused.

How: OpenVINO's own PyTorch front end traces the network that ``registry.load_model`` built
from the verified weights; no ONNX in between (torch's TorchScript ONNX exporter is
deprecated, and the IR is what OpenVINO runs anyway). The input shape is
dynamic (any batch, any spatial size), so one export serves every study and the sliding window.
Operations get deterministic names before the IR is serialised, so the export of the same
weights by the same OpenVINO version has the same bytes, and its sha256 identifies it in the
job's provenance. The IR is cached under the data folder, keyed by the weights' checksum, the
OpenVINO version and :data:`EXPORT_RECIPE`, and re-hashed whenever it is read.

No telemetry: ``import openvino`` loads its model-conversion tool, which loads the
``openvino_telemetry`` package (a dependency of the wheel) that writes a client id under
``~/intel`` and sends usage events to Google Analytics unless opted out. A hospital node sends
nothing: this module marks that package as absent before importing OpenVINO (the tool then
uses its built-in stub), and converts through the front end, not the tool.

Safety: before an export is used, PyTorch and OpenVINO run one seeded probe volume and their
probabilities must agree within :data:`MAX_PROBE_DIFFERENCE`; otherwise the caller falls back.
The network is exported before it ever runs under ``torch.inference_mode`` (tracing cannot use
parameters touched in that mode), i.e. straight after loading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch.jit import TracerWarning  # type: ignore[attr-defined]

# Before the first import of openvino (see the module docstring): None in sys.modules makes
# `import openvino_telemetry` raise ImportError, and OpenVINO falls back to its stub.
if "openvino" not in sys.modules:
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

import openvino  # noqa: E402
from openvino.frontend import FrontEndManager  # noqa: E402
from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder  # noqa: E402

from segnode.pipeline.model.errors import BackendError  # noqa: E402
from segnode.pipeline.model.network import segmentation_logits  # noqa: E402

log = logging.getLogger(__name__)

OPENVINO_VERSION = version("openvino")
EXPORT_RECIPE = 1
"""Bump when the export below changes, so cached exports of the old recipe are not reused."""
PROBE_SHAPE = (1, 32, 32, 32)
"""(batch, x, y, z) of the seeded probe; 32 is the smallest size every shipped network halves
three times and still convolves."""
MAX_PROBE_DIFFERENCE = 1e-3
"""Largest probability difference between the backends on the probe (measured: ~1e-5 there,
~1e-3 at worst over whole BraTS volumes)."""
_PLUGIN = "CPU"


class _Logits(torch.nn.Module):
    """The segmentation head only (a VAE's second output dropped), as one traceable graph."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return segmentation_logits(self.network, batch)


@dataclass(frozen=True)
class IrExport:
    """An OpenVINO IR: the graph (XML) and its weights (binary), and their joint sha256."""

    xml: bytes
    weights: bytes

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for part in (self.xml, self.weights):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        return digest.hexdigest()


def export_ir(network: torch.nn.Module, in_channels: int) -> IrExport:
    """The network as OpenVINO IR with a dynamic (batch, spatial) input, float32 weights.

    Raises:
        BackendError: OpenVINO cannot convert one of the network's operations.
    """
    head = _Logits(network).eval()
    example = torch.zeros(1, in_channels, *PROBE_SHAPE[1:])
    try:
        # The tracer warns about shape checks it freezes (GroupNorm's batch check); the
        # probe at another shape, and the equality tests, show the graph stays dynamic.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", TracerWarning)
            decoder = TorchScriptPythonDecoder(head, example_input=(example,))
        front_end = FrontEndManager().load_by_framework("pytorch")
        model = front_end.convert(front_end.load(decoder))
        model.reshape({model.inputs[0]: openvino.PartialShape([-1, in_channels, -1, -1, -1])})
    except Exception as exc:  # the front end raises its own types, and RuntimeError
        raise BackendError(f"OpenVINO {OPENVINO_VERSION} cannot convert the network: {exc}") from exc
    model.set_friendly_name("segnode")
    for index, operation in enumerate(model.get_ordered_ops()):
        operation.set_friendly_name(f"op{index}")
    with tempfile.TemporaryDirectory(prefix="segnode-ir-") as folder:
        xml = Path(folder) / "model.xml"
        openvino.save_model(model, str(xml), compress_to_fp16=False)
        return IrExport(xml=xml.read_bytes(), weights=xml.with_suffix(".bin").read_bytes())


def cached_export(
    network: torch.nn.Module, in_channels: int, cache_dir: Path, weights_sha256: str
) -> IrExport:
    """The IR of these weights from ``cache_dir``, exported (and cached) when absent or altered.

    The cache is keyed by what determines the export's bytes; a cached IR whose bytes no
    longer match the checksum stored beside it is exported again, never used.
    """
    folder = cache_dir / f"{weights_sha256[:16]}-openvino-{OPENVINO_VERSION}-r{EXPORT_RECIPE}"
    record_path = folder / "export.json"
    try:
        recorded = json.loads(record_path.read_text())
        cached = IrExport(
            xml=(folder / "model.xml").read_bytes(), weights=(folder / "model.bin").read_bytes()
        )
        if recorded.get("weights_sha256") == weights_sha256 and recorded.get("sha256") == cached.sha256:
            return cached
        log.warning("cached OpenVINO export in %s does not match its checksum: exporting again", folder)
    except (OSError, ValueError):
        pass
    export = export_ir(network, in_channels)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in (("model.xml", export.xml), ("model.bin", export.weights)):
            partial = folder / f".{name}.partial"
            partial.write_bytes(data)
            os.replace(partial, folder / name)
        record = {"weights_sha256": weights_sha256, "sha256": export.sha256, "openvino": OPENVINO_VERSION}
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:  # a read-only data folder costs an export per load, nothing else
        log.warning("cannot cache the OpenVINO export in %s: %s", folder, exc)
    return export


class OpenVinoNetwork(torch.nn.Module):
    """A compiled IR behind the ``torch.nn.Module`` interface inference expects.

    ``forward`` takes and returns CPU float32 tensors (logits), so ``predict_regions`` runs
    it unchanged: flips, batching, the sliding window and the pass agreement included. It has
    no parameters: ``.to()`` and ``.eval()`` change nothing.
    """

    def __init__(self, export: IrExport, threads: int) -> None:
        super().__init__()
        core = openvino.Core()
        model = core.read_model(
            model=export.xml, weights=openvino.Tensor(np.frombuffer(export.weights, dtype=np.uint8))
        )
        self.compiled = core.compile_model(
            model,
            _PLUGIN,
            {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
        self.threads = threads

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.device.type != "cpu":
            raise BackendError(f"the OpenVINO backend runs on the CPU, got a tensor on {batch.device}")
        array = np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)
        output = self.compiled(array)[0]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))


def probe_difference(reference: torch.nn.Module, candidate: torch.nn.Module, in_channels: int) -> float:
    """Largest probability difference between two networks on one seeded random volume."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(PROBE_SHAPE[0], in_channels, *PROBE_SHAPE[1:], generator=generator)
    with torch.no_grad():
        expected = torch.sigmoid(segmentation_logits(reference.eval(), probe))
        got = torch.sigmoid(candidate(probe))
    return float((expected - got).abs().max())
