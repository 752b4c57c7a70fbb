"""CPU inference backends: PyTorch against OpenVINO and ONNX Runtime, on real BraTS cases.

What is measured is what a job's infer step costs: ``segmentation.region_probabilities`` (the
node's path: brain box, the model's 2 mm grid, the 8 TTA flips in one batch, the ensemble)
on the brain-cropped, normalised volume of real cases from ../shared/data/brats, with the
default model and 2 threads. Each backend's network is loaded (and exported) once, as a warm
worker holds it; per case the backends run in a rotating order, once each, so that drift on
a shared machine hits them alike. Agreement is Dice between the label maps after the
model's post-processing (PyTorch's as the reference), per region.

Adoption rule (issue 13): a backend replaces PyTorch on the CPU only if it is >= 1.5x faster
with Dice >= 0.999 on every case and region.

Run: .venv/bin/python bench/backends.py [--cases 8] [--threads 2] [--no-tta]
     ONNX Runtime is timed when installed: .venv/bin/pip install -c constraints.txt -e '.[bench]'
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BRATS = REPO.parent / "shared" / "data" / "brats"


def _onnx_runtime_network(network: Any, in_channels: int, threads: int) -> Any:
    """The network through torch's ONNX export and ONNX Runtime (bench only: not adopted)."""
    import numpy as np
    import onnxruntime
    import torch

    from segnode.pipeline.model.network import segmentation_logits

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return segmentation_logits(self.network, batch)

    buffer = io.BytesIO()
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    with torch.no_grad():
        torch.onnx.export(
            Head().eval(), (torch.zeros(1, in_channels, 32, 32, 32),), buffer,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes}, opset_version=17, dynamo=False,
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    class OrtNetwork(torch.nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            output = session.run(None, {"image": np.ascontiguousarray(batch.numpy())})[0]
            return torch.from_numpy(np.asarray(output, dtype=np.float32))

    return OrtNetwork()


def _dice(a: Any, b: Any) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8, help="real BraTS cases, spread over the folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--model", default="segnode-brats22-v1")
    args = parser.parse_args()

    import dataclasses

    import numpy as np
    import torch

    from segnode.config.settings import ModelSettings
    from segnode.pipeline.model.backend import on_backend
    from segnode.pipeline.model.registry import node_registry
    from segnode.pipeline.model.segmentation import labels_from, region_probabilities
    from segnode.pipeline.training.brats_data import find_cases, load_case
    from segnode.pipeline.training.prediction import brain_box
    from segnode.vocabulary import LabelConvention

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    exports = Path(tempfile.mkdtemp(prefix="segnode-bench-exports-"))
    registry = node_registry(Path(tempfile.mkdtemp(prefix="segnode-bench-")))
    reference = registry.load(args.model, device)
    backends: dict[str, Any] = {"pytorch": reference}
    load_s: dict[str, float] = {"pytorch": 0.0}
    started = time.perf_counter()
    openvino_model, choice = on_backend(registry.load(args.model, device), "openvino", device, exports)
    load_s["openvino"] = time.perf_counter() - started
    backends["openvino"] = openvino_model
    try:
        started = time.perf_counter()
        ort = _onnx_runtime_network(
            registry.load(args.model, device).network, reference.manifest.architecture.in_channels, args.threads
        )
        load_s["onnxruntime"] = time.perf_counter() - started
        backends["onnxruntime"] = dataclasses.replace(reference, network=ort)
    except ImportError:
        print("# onnxruntime not installed: pip install -c constraints.txt -e '.[bench]' to time it")

    settings = ModelSettings(default=args.model)
    all_cases = find_cases(BRATS, require_label=False)
    step = max(1, len(all_cases) // args.cases)
    cases = all_cases[::step][: args.cases]
    print(f"# segnode CPU backends benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"{args.threads} threads, Python {platform.python_version()}, torch {torch.__version__}, "
          f"OpenVINO {choice.version}; model {args.model}, TTA {'off' if args.no_tta else 'on'}")
    print("# export + compile (once per worker; cached export afterwards): "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in load_s.items() if name != "pytorch"))
    print(f"# OpenVINO export sha256 {choice.export_sha256}\n")
    names = list(backends)
    header = f"{'case':<24}{'box':<14}" + "".join(f"{name:>13}" for name in names)
    header += "".join(f"  {name} ×, Dice WT/TC/ET" for name in names[1:])
    print(header)
    ratios: dict[str, list[float]] = {name: [] for name in names[1:]}
    worst: dict[str, float] = {name: 1.0 for name in names[1:]}
    seconds_of: dict[str, list[float]] = {name: [] for name in names}
    for index, case in enumerate(cases):
        image, _ = load_case(case, reference.manifest.input_channels)
        box = brain_box(image)
        cropped = np.ascontiguousarray(image[(slice(None), *box)])
        roles = reference.manifest.input_channels
        order = names[index % len(names):] + names[: index % len(names)]
        seconds: dict[str, float] = {}
        labels: dict[str, Any] = {}
        for name in order:
            began = time.perf_counter()
            probabilities, _ = region_probabilities(
                [backends[name]], cropped, roles, tta=not args.no_tta, device=device
            )
            seconds[name] = time.perf_counter() - began
            labels[name], _ = labels_from(probabilities, reference, settings, LabelConvention.BRATS_2021)
        line = f"{case.case_id:<24}{'x'.join(str(s.stop - s.start) for s in box):<14}"
        line += "".join(f"{seconds[name]:>12.1f}s" for name in names)
        for name in names[1:]:
            ratio = seconds["pytorch"] / seconds[name]
            ratios[name].append(ratio)
            regions = []
            for value_set in ((1, 2, 4), (1, 4), (4,)):  # WT, TC, ET of the BraTS-2021 labels
                dice = _dice(np.isin(labels[name], value_set), np.isin(labels["pytorch"], value_set))
                worst[name] = min(worst[name], dice)
                regions.append(f"{dice:.4f}")
            line += f"  {ratio:4.2f}× {'/'.join(regions)}"
        for name in names:
            seconds_of[name].append(seconds[name])
        print(line, flush=True)
    print()
    for name in names[1:]:
        geometric = float(np.exp(np.mean(np.log(ratios[name]))))
        print(f"{name}: median {statistics.median(seconds_of[name]):.1f} s against PyTorch's "
              f"{statistics.median(seconds_of['pytorch']):.1f} s; speed-up median "
              f"{statistics.median(ratios[name]):.2f}×, geometric mean {geometric:.2f}×, "
              f"range {min(ratios[name]):.2f}-{max(ratios[name]):.2f}×; worst Dice {worst[name]:.4f}")


if __name__ == "__main__":
    main()
