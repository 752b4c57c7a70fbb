"""Inference benchmark: one forward pass of the paper's network, with and without TTA.

Shapes: a full BraTS case (240x240x155, padded to 240x240x160) and a brain-cropped case
(160x192x128, what preprocessing produces for a typical brain). Networks: 32 initial
filters (the paper, SegResNetVAE in eval mode) and 16 (the MONAI model-zoo bundle,
SegResNet). TTA is the mean over the 8 axis flips (paper section 4): 8 forward passes.
Each configuration runs in a fresh child process so peak RSS is its own. Random weights:
speed and memory do not depend on the values.

Run: .venv/bin/python bench/inference.py [--threads 2] [--device cpu|cuda] [--no-tta-full]
     .venv/bin/python bench/inference.py --model segnode-brats22-v1   (a shipped or imported
     model as the node runs it: its grid, its ensemble members, predict_regions, TTA on/off)
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPES = {"full 240x240x160": (240, 240, 160), "cropped 160x192x128": (160, 192, 128)}


def _run(filters: int, shape: tuple[int, int, int], tta: bool, threads: int, device_name: str, queue: Any) -> None:
    import torch

    from segnode.pipeline.model.manifest import ArchitectureSpec
    from segnode.pipeline.model.network import build_network, segmentation_logits

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    name = "SegResNetVAE" if filters == 32 else "SegResNet"
    network = build_network(ArchitectureSpec(name=name, init_filters=filters, vae_input_shape=shape)).to(device)
    network.eval()
    batch = torch.randn(1, 4, *shape, device=device)
    if device.type == "cpu":
        network = network.to(memory_format=torch.channels_last_3d)
        batch = batch.to(memory_format=torch.channels_last_3d)
    flips = [axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n)] if tta else [()]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        if device.type == "cuda":  # warm-up (cuDNN autotuning) not counted
            segmentation_logits(network, batch)
            torch.cuda.synchronize()
        started = time.perf_counter()
        total = torch.zeros(1, 3, *shape, device=device)
        for axes in flips:
            flipped = torch.flip(batch, axes) if axes else batch
            output = torch.sigmoid(segmentation_logits(network, flipped).float())
            total += torch.flip(output, axes) if axes else output
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak))


def _run_model(model_id: str, tta: bool, threads: int, device_name: str, queue: Any) -> None:
    import numpy as np
    import torch

    from segnode.pipeline.model.inference import choose_roi, predict_regions
    from segnode.pipeline.model.registry import node_registry
    from segnode.pipeline.model.resolution import coarse_shape

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    with __import__("tempfile").TemporaryDirectory() as data_dir:
        loaded = node_registry(Path(data_dir)).load(model_id, device)
    factor = loaded.manifest.spacing_factor()
    shape = SHAPES["cropped 160x192x128"]
    image = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    started = time.perf_counter()
    predict_regions(
        [loaded.network], image, output_channels=loaded.manifest.output_channels, tta=tta,
        roi_size=choose_roi(coarse_shape(shape, factor)), device=device,
        amp_dtype=torch.bfloat16 if device.type == "cuda" else None, spacing_factor=factor,
    )
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-tta-full", action="store_true", help="skip TTA on full-size volumes (slow on CPU)")
    parser.add_argument("--model", help="time this registry model (built-in or imported) instead")
    args = parser.parse_args()
    print(f"# segnode inference benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, device {args.device}, "
          f"Python {platform.python_version()}\n")
    print(f"{'filters':>7}  {'input':<22}{'TTA':<5}{'seconds':>9}{'peak RSS MB':>13}{'peak GPU MB':>13}")
    context = multiprocessing.get_context("spawn")
    if args.model:
        for tta in (False, True):
            queue = context.Queue()
            process = context.Process(target=_run_model, args=(args.model, tta, args.threads, args.device, queue))
            process.start()
            seconds, rss, gpu = queue.get()
            process.join()
            label = "cropped 160x192x128"
            print(f"{args.model:>7}  {label:<22}{'yes' if tta else 'no':<5}{seconds:>9.1f}{rss:>13.0f}{gpu:>13.0f}", flush=True)
        return
    for filters in (16, 32):
        for label, shape in SHAPES.items():
            for tta in (False, True):
                if tta and args.no_tta_full and label.startswith("full"):
                    continue
                queue = context.Queue()
                process = context.Process(target=_run, args=(filters, shape, tta, args.threads, args.device, queue))
                process.start()
                seconds, rss, gpu = queue.get()
                process.join()
                print(f"{filters:>7}  {label:<22}{'yes' if tta else 'no':<5}{seconds:>9.1f}{rss:>13.0f}{gpu:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
