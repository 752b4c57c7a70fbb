"""Warm-up (not a step of the job): load in a worker process what the steps will load.

torch, MONAI and every step module imported; deepbet's models and the configured
segmentation models loaded (and exported for their backend) and kept (``load_brain_extractor``'s cache and
``segmentation.preload_models``), so a warm worker's first job finds them ready.
"""

from __future__ import annotations

import importlib
import os
import time

from segnode.pipeline.brain_extraction import load_brain_extractor
from segnode.pipeline.model.device import select_device
from segnode.pipeline.model.segmentation import preload_models
from segnode.pipeline.steps import STEP_ORDER, StepSettings


def run(settings: StepSettings) -> dict[str, object]:
    """Load everything; returns what was loaded and how long it took."""
    started = time.perf_counter()
    for name in STEP_ORDER:
        importlib.import_module(f"segnode.pipeline.steps.{name}")
    load_brain_extractor("cpu")
    device = select_device(settings.model.device)
    models = preload_models(
        settings.data_dir,
        (settings.model.default, *settings.model.ensemble),
        device,
        settings.model.backend,
    )
    return {
        "pid": os.getpid(),
        "models": list(models),
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 2),
    }
