"""What the node needs to run pipeline steps, without loading the pipeline itself.

Why a separate module: the steps (``pipeline/steps.py``) import torch, MONAI, deepbet and
highdicom, seconds and hundreds of MB that the DICOM listener's process must not pay.
The node builds :class:`StepSettings` and calls :func:`run_step` through its worker pool;
``run_step`` imports the steps inside the worker process only.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import (
    OUTPUT_KINDS,
    ModelSettings,
    OutputKind,
    OutputSettings,
    PreprocessingSettings,
    SelectionSettings,
    Settings,
)
from pipeline.errors import PipelineError
from pipeline.workspace import Workspace

#: The pipeline steps in order, named after the job state they run in.
STEP_NAMES = ("selecting", "converting", "preprocessing", "inferring", "writing")


@dataclass(frozen=True)
class StepSettings:
    """The parts of the configuration the steps read (picklable, unlike ``Settings``)."""

    data_dir: Path
    selection: SelectionSettings
    preprocessing: PreprocessingSettings
    model: ModelSettings
    outputs: OutputSettings
    output_kinds: tuple[OutputKind, ...] = ("seg", "sr")

    @classmethod
    def from_settings(
        cls, settings: Settings, output_kinds: Collection[OutputKind] | None = None
    ) -> StepSettings:
        if output_kinds is None:
            wanted = {kind for d in settings.delivery.destinations for kind in d.send}
            output_kinds = wanted or {"seg", "sr"}
        return cls(
            data_dir=Path(settings.storage.data_dir),
            selection=settings.selection,
            preprocessing=settings.preprocessing,
            model=settings.model,
            outputs=settings.outputs,
            output_kinds=tuple(kind for kind in OUTPUT_KINDS if kind in set(output_kinds)),
        )


def run_step(name: str, work_dir: Path, settings: StepSettings) -> dict[str, Any]:
    """Entry point for a worker process: run one named step on one job folder."""
    from pipeline.steps import STEPS  # here, not at the top: see the module docstring

    step = STEPS.get(name)
    if step is None:
        raise PipelineError(f"unknown pipeline step {name!r}")
    started = time.perf_counter()
    record = step(Workspace(work_dir), settings)
    record["step_s"] = round(time.perf_counter() - started, 3)
    return record
