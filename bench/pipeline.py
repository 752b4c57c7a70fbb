"""Imaging-half benchmark: wall time and peak memory of each step on the TCGA study.

The study is the four real TCGA-FG-6692 native sequences written as DICOM series
(tests/fixtures/dicom_study.py). Each step runs in a fresh child process so its
peak RSS (ru_maxrss of that child) is the step's own. Steps:
  convert            four series -> volumes (pydicom headers + SimpleITK/GDCM pixels)
  brain_extraction   deepbet on the native T1c (model load included: a cold worker)
  registration       T1, T2, FLAIR -> T1c, rigid Mattes MI
  resample           onto the 1 mm grid, mask, crop, z-score (given the above)
  whole              everything above in one process (the number the target is about)

Run: .venv/bin/python bench/pipeline.py [--threads N]   (target: whole < 60 s on 2 cores)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _volumes(folder: Path) -> dict[Any, Any]:
    from segnode.pipeline.conversion import convert_series
    from segnode.vocabulary import Role

    return {
        Role(path.name.split("_", 1)[1]): convert_series(sorted(path.iterdir()))
        for path in sorted(folder.iterdir())
        if path.is_dir()
    }


def step_convert(folder: Path) -> None:
    _volumes(folder)


def step_brain_extraction(folder: Path) -> None:
    from segnode.pipeline.brain_extraction import extract_brain
    from segnode.vocabulary import Role

    volumes = _volumes(folder)
    started = time.perf_counter()
    extract_brain(volumes[Role.T1C].image)
    print(f"    (brain extraction alone: {time.perf_counter() - started:.1f} s)")


def step_registration(folder: Path) -> None:
    import SimpleITK as sitk

    from segnode.pipeline.brain_extraction import extract_brain
    from segnode.pipeline.registration import register_rigid
    from segnode.vocabulary import Role

    volumes = _volumes(folder)
    fixed = sitk.Cast(volumes[Role.T1C].image, sitk.sitkFloat32)
    mask = extract_brain(fixed).mask
    started = time.perf_counter()
    for role in (Role.T1, Role.T2, Role.FLAIR):
        register_rigid(fixed, sitk.Cast(volumes[role].image, sitk.sitkFloat32), fixed_mask=mask)
    print(f"    (three registrations alone: {time.perf_counter() - started:.1f} s)")


def step_whole(folder: Path) -> None:
    from segnode.config.settings import PreprocessingSettings
    from segnode.pipeline.preprocessing import preprocess

    study = preprocess(_volumes(folder), PreprocessingSettings())
    timings = study.record["timings_s"]
    print("    (in-process step times: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")  # type: ignore[union-attr]


def _run(step: str, folder: str, threads: int, queue: Any) -> None:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    started = time.perf_counter()
    globals()[f"step_{step}"](Path(folder))
    queue.put((time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from tests.fixtures.dicom_study import build_tcga_study

    with tempfile.TemporaryDirectory() as tmp:
        build_tcga_study(Path(tmp))
        print(f"# segnode imaging benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
              f"Python {platform.python_version()}")
        print("# study: TCGA-FG-6692 native, 4 series of 26 slices (0.9x0.9x5.5 mm)\n")
        print(f"{'step':<18}{'wall s':>8}{'peak RSS MB':>13}")
        context = multiprocessing.get_context("spawn")
        for step in ("convert", "brain_extraction", "registration", "whole"):
            queue = context.Queue()
            process = context.Process(target=_run, args=(step, tmp, args.threads, queue))
            process.start()
            seconds, peak_mb = queue.get()
            process.join()
            print(f"{step:<18}{seconds:>8.1f}{peak_mb:>13.0f}")


if __name__ == "__main__":
    main()
