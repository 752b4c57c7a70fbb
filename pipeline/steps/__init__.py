"""The job's pipeline steps: their order, the settings they read, and the one way to run them.

Light on purpose: this package's ``__init__`` imports no torch, MONAI, deepbet or highdicom, so
the node's process (the DICOM listener) can name and schedule steps without loading them. Each
step is its own module (``select``, ``convert``, ``preprocess``, ``infer``, ``write``) that imports
its heavy libraries at the top; :func:`run_step` imports the one it runs, inside the worker
process (``segnode.node.jobs.worker_pool``).

Why this shape: a step reads the files the previous step wrote into the job's
:class:`~segnode.pipeline.workspace.Workspace`, writes its own, and returns a small JSON-able
record of its inputs, decisions and outputs for the job's event log. Nothing else passes
between steps (no database, no network, no shared memory), so the node's local worker
pool runs them today and a distributed engine can run the same functions later, and a
killed job resumes at the first step whose outputs were not recorded as finished.

Errors: :class:`~segnode.pipeline.errors.PipelineError` subclasses are permanent (the same input
fails the same way: a missing FLAIR, a corrupt model); anything else (``OSError``, a dead
worker) may be transient and is the caller's to classify (``segnode.storage.job_states``).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from segnode.config.quality import QualitySettings
from segnode.config.settings import (
    ModelSettings,
    PreprocessingSettings,
    ResultSeriesSettings,
    SelectionSettings,
    Settings,
)
from segnode.pipeline.errors import PipelineError
from segnode.pipeline.workspace import Workspace
from segnode.vocabulary import OUTPUT_KINDS, OutputKind

log = logging.getLogger(__name__)

#: The pipeline steps in the order they run; each is the module ``segnode.pipeline.steps.<name>``.
STEP_ORDER = ("select", "convert", "preprocess", "infer", "write")


@dataclass(frozen=True)
class StepSettings:
    """The parts of the configuration the steps read (picklable, unlike ``Settings``).

    ``outputs`` is what the write step produces; which outputs a node wants is a delivery
    decision (``segnode.node.delivery.wanted_output_kinds``), made by the caller.
    """

    data_dir: Path
    selection: SelectionSettings
    preprocessing: PreprocessingSettings
    model: ModelSettings
    result_series: ResultSeriesSettings
    outputs: tuple[OutputKind, ...] = ("seg", "sr")
    quality: QualitySettings = QualitySettings()

    @classmethod
    def from_settings(cls, settings: Settings, outputs: Collection[OutputKind]) -> StepSettings:
        wanted = set(outputs)
        return cls(
            data_dir=Path(settings.storage.data_dir),
            selection=settings.selection,
            preprocessing=settings.preprocessing,
            model=settings.model,
            result_series=settings.result_series,
            quality=settings.quality,
            outputs=tuple(kind for kind in OUTPUT_KINDS if kind in wanted),
        )


#: A step: a function of a job folder and settings, returning the record for the event log.
Step = Callable[[Workspace, StepSettings], dict[str, object]]


def step_function(name: str) -> Step:
    """The ``run`` function of step ``name`` (imports the step's module, and its libraries)."""
    if name not in STEP_ORDER:
        raise PipelineError(f"unknown pipeline step {name!r}; the steps are {', '.join(STEP_ORDER)}")
    module = importlib.import_module(f"{__name__}.{name}")
    step: Step = module.run
    return step


def run_step(name: str, work_dir: Path, settings: StepSettings) -> dict[str, object]:
    """Entry point for a worker process: run one named step on one job folder."""
    step = step_function(name)
    started = time.perf_counter()
    record = step(Workspace(work_dir), settings)
    record["step_s"] = round(time.perf_counter() - started, 3)
    return record


def run_all(work_dir: Path, settings: StepSettings) -> dict[str, dict[str, object]]:
    """Every step in order on one job folder, in this process (``segnode run``)."""
    return {name: run_step(name, work_dir, settings) for name in STEP_ORDER}



def warm_up(settings: StepSettings) -> dict[str, object]:
    """Load what the steps load, in this (worker) process (``segnode.pipeline.steps.warm``).

    Imported by name, like a step, so that this package (and the node's process, which names
    this function for ``WorkerPool.warm``) never imports torch, MONAI or deepbet.
    """
    warm: Callable[[StepSettings], dict[str, object]] = importlib.import_module(f"{__name__}.warm").run
    return warm(settings)
