"""Pipeline steps run in separate worker processes; inference uses verified registry models."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from segnode.config.settings import ModelSettings
from segnode.node.jobs.worker_pool import StepTimeoutError, WorkerCrashedError, WorkerPool
from segnode.pipeline.model.registry import ModelRegistry
from segnode.pipeline.model.segmentation import SegmentationRequest, segment
from tests.helpers import wait_for
from tests.pipeline.model.tiny_model import write_model_folder


def test_segmentation_runs_in_another_process(tmp_path: Path) -> None:
    """A tiny random model (synthetic weights) through the real registry and worker."""
    write_model_folder(tmp_path / "source")
    ModelRegistry(tmp_path / "data" / "models").add_folder(tmp_path / "source")
    image = np.random.default_rng(0).normal(size=(4, 40, 48, 32)).astype(np.float32)
    worker = WorkerPool()
    try:
        result = worker.run(
            300,
            segment,
            SegmentationRequest(
                image=image, roles=("t1", "t1c", "t2", "flair"), data_dir=tmp_path / "data",
                model=ModelSettings(default="tiny-random-test", tta=False, device="cpu"),
            ),
        )
    finally:
        worker.close()
    assert result.worker_pid != os.getpid()
    assert result.labels.shape == (40, 48, 32) and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels).tolist()) <= {0, 1, 2, 4}
    [model] = result.models
    assert model["id"] == "tiny-random-test" and len(model["sha256"]) == 64


def test_a_dead_worker_is_a_transient_error_and_the_pool_recovers() -> None:
    pool = WorkerPool()
    try:
        with pytest.raises(WorkerCrashedError, match="worker process died"):
            pool.run(60, os._exit, 3)  # the worker dies as if killed or out of memory
        assert pool.run(60, os.getpid) != os.getpid()
    finally:
        pool.close()


def test_a_step_past_its_timeout_is_stopped_and_the_pool_recovers() -> None:
    pool = WorkerPool()
    try:
        first = pool.run(60, os.getpid)
        with pytest.raises(StepTimeoutError, match="longer than 1 s"):
            pool.run(1, time.sleep, 30)
        assert isinstance(StepTimeoutError("x"), TimeoutError)  # transient for the job runner
        second = pool.run(60, os.getpid)
        assert second != first  # the hung worker was replaced
        wait_for(lambda: not _alive(first), 10, "the hung worker to be gone")
    finally:
        pool.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _log_like_a_step_reading_hostile_bytes() -> int:
    import logging
    import warnings

    warnings.warn("The value length (911) exceeds ... CANARY^PATIENT", UserWarning, stacklevel=1)
    logging.getLogger("pydicom").warning("Invalid value for VR UI: 'CANARY^PATIENT'")
    logging.getLogger("segnode.pipeline.steps").info("step line from a worker")
    return os.getpid()


def test_workers_log_json_with_third_party_text_withheld(capfd: pytest.CaptureFixture[str]) -> None:
    pool = WorkerPool(1, "INFO", "json")
    try:
        assert pool.run(60, _log_like_a_step_reading_hostile_bytes) != os.getpid()
    finally:
        pool.close()
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert "CANARY" not in err
    assert any(line.get("logger") == "segnode.pipeline.steps" for line in lines)
    assert sum("withheld" in line["message"] for line in lines) >= 2


def _log_like_a_step() -> int:
    import logging

    step_log = logging.getLogger("segnode.pipeline.steps.select")
    step_log.info("a step's progress")
    step_log.warning("a step's warning", extra={"series": 3})
    return os.getpid()


def test_a_steps_lines_reach_the_nodes_stderr_with_the_callers_job_and_step(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The worker inherits the node's stderr (fd 2) and the caller's log context.

    ``capfd`` captures file descriptor 2 itself, which is where the node's handler
    writes and what ``segnode serve``'s log (journal or file) is.
    """
    from segnode.node.logs import log_context

    pool = WorkerPool(1, "INFO", "json")
    try:
        with log_context(job_id=42, step="selecting"):
            worker_pid = pool.run(60, _log_like_a_step)
        assert pool.run(60, _log_like_a_step) == worker_pid  # same worker, outside any context
    finally:
        pool.close()
    assert worker_pid != os.getpid()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.strip()]
    steps = [line for line in lines if line["logger"] == "segnode.pipeline.steps.select"]
    assert [(line["level"], line["message"]) for line in steps] == [
        ("INFO", "a step's progress"),
        ("WARNING", "a step's warning"),
    ] * 2
    first, second = steps[:2], steps[2:]
    assert all(line["job_id"] == 42 and line["step"] == "selecting" for line in first)
    assert first[1]["series"] == 3
    assert not any("job_id" in line or "step" in line for line in second)  # nothing left behind


_WARMED: dict[str, int] = {}


def _warm_marker(value: int) -> int:
    """A stand-in warm-up: leaves a mark in the worker process."""
    _WARMED["value"] = value
    return os.getpid()


def _warm_state() -> tuple[int, int | None]:
    return os.getpid(), _WARMED.get("value")


def test_a_warmed_pool_runs_the_warm_up_first_and_again_in_a_replacement_worker() -> None:
    pool = WorkerPool()
    try:
        pool.warm(_warm_marker, 7)
        pid, mark = pool.run(60, _warm_state)
        assert pid != os.getpid() and mark == 7  # the step found the worker warm
        assert pool.run(60, _warm_state) == (pid, 7)  # and it stays warm between steps
        with pytest.raises(WorkerCrashedError):
            pool.run(60, os._exit, 3)
        new_pid, new_mark = pool.run(60, _warm_state)
        assert new_pid != pid and new_mark == 7  # the replacement was warmed too
    finally:
        pool.close()


def test_an_unwarmed_pool_leaves_the_worker_cold() -> None:
    pool = WorkerPool()
    try:
        assert pool.run(60, _warm_state)[1] is None
    finally:
        pool.close()


def test_the_steps_warm_up_loads_deepbet_and_the_configured_model(tmp_path: Path) -> None:
    """In this process, with a tiny random model (synthetic weights) in a real registry."""
    from segnode.config.settings import (
        PreprocessingSettings,
        ResultSeriesSettings,
        SelectionSettings,
    )
    from segnode.pipeline.brain_extraction import load_brain_extractor
    from segnode.pipeline.model import segmentation
    from segnode.pipeline.steps import StepSettings, warm_up

    write_model_folder(tmp_path / "source")
    ModelRegistry(tmp_path / "data" / "models").add_folder(tmp_path / "source")
    settings = StepSettings(
        data_dir=tmp_path / "data",
        selection=SelectionSettings(),
        preprocessing=PreprocessingSettings(),
        model=ModelSettings(default="tiny-random-test", tta=False, device="cpu"),
        result_series=ResultSeriesSettings(),
    )
    record = warm_up(settings)
    assert record["models"] == ["tiny-random-test"] and record["device"] == "cpu"
    assert (str(settings.data_dir), "tiny-random-test", "cpu", "auto") in segmentation._models
    assert load_brain_extractor.cache_info().currsize >= 1
