"""The steps package: its order names real step modules, its ``__init__`` stays light, and
a step runs on a job folder and nothing else.

The select step runs for real here (on TCGA-FG-6692 written as DICOM: headers only, a few
seconds); the heavy steps run in tests/node/test_job_runner.py and the end-to-end tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from segnode.config.settings import Settings
from segnode.pipeline.errors import PipelineError
from segnode.pipeline.steps import STEP_ORDER, StepSettings, run_step, step_function
from segnode.pipeline.workspace import Inputs, Workspace, WorkspaceError
from segnode.storage.job_states import STEP_FOR_STATE
from segnode.vocabulary import Role
from tests.fixtures.dicom_study import BuiltSeries

#: What the node's process (the DICOM listener) must never load by naming a step.
HEAVY = ("torch", "monai", "deepbet", "highdicom", "SimpleITK")


def test_step_order_names_step_modules_each_with_a_run_function() -> None:
    assert len(set(STEP_ORDER)) == len(STEP_ORDER) == 5
    for name in STEP_ORDER:
        module = importlib.import_module(f"segnode.pipeline.steps.{name}")
        step = step_function(name)
        assert step is module.run
        assert list(inspect.signature(step).parameters) == ["workspace", "settings"]
    assert set(STEP_FOR_STATE.values()) == set(STEP_ORDER)  # every step has its job state


def test_importing_the_steps_package_loads_no_heavy_library() -> None:
    """In a fresh interpreter: this test process has loaded everything already."""
    probe = (
        "import json, sys\n"
        "import segnode.pipeline.steps, segnode.pipeline.workspace\n"
        f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout) == []


def test_an_unknown_step_is_a_pipeline_error_naming_the_steps() -> None:
    with pytest.raises(PipelineError, match=r"unknown pipeline step 'segment'; the steps are select, convert"):
        step_function("segment")


@pytest.fixture
def step_settings(make_settings: Callable[..., Settings]) -> StepSettings:
    return StepSettings.from_settings(make_settings(), ("seg", "sr"))


def test_a_step_without_its_input_file_fails_naming_it(tmp_path: Path, step_settings: StepSettings) -> None:
    with pytest.raises(WorkspaceError, match=r"inputs\.json is missing in the job folder"):
        run_step("select", tmp_path, step_settings)
    with pytest.raises(WorkspaceError, match=r"selection\.json is missing"):
        run_step("convert", tmp_path, step_settings)


def test_select_writes_the_typed_selection_the_next_steps_read(
    tmp_path: Path, step_settings: StepSettings, tcga_study: dict[str, BuiltSeries]
) -> None:
    workspace = Workspace(tmp_path / "job")
    workspace.write_inputs(
        Inputs.of(
            next(iter(tcga_study.values())).study_instance_uid,
            {series.series_instance_uid: series.files for series in tcga_study.values()},
        )
    )
    record = run_step("select", workspace.root, step_settings)

    selection = workspace.read_selection()
    for role in Role:
        built = tcga_study[role.value]
        assert selection.series(role).series_instance_uid == built.series_instance_uid
        assert selection.files(role) == sorted(built.files)
    assert record["roles"] == {role.value: tcga_study[role.value].series_instance_uid for role in Role}
    assert record["candidates"] == selection.record  # the event log gets what the file keeps
    assert isinstance(record["step_s"], float)


def test_convert_extracts_the_brain_meanwhile_and_preprocess_uses_that_mask(
    tmp_path: Path, step_settings: StepSettings, tcga_study: dict[str, BuiltSeries]
) -> None:
    """Issue 13 item 5 on the real TCGA-FG-6692 series: deepbet runs while the other three
    series convert, and the preprocess step takes its mask, only for the series it was made on."""
    import numpy as np
    import SimpleITK as sitk

    from segnode.pipeline.brain_extraction import extract_brain
    from segnode.pipeline.workspace_images import read_image, read_volume

    workspace = Workspace(tmp_path / "job")
    workspace.write_inputs(
        Inputs.of(
            next(iter(tcga_study.values())).study_instance_uid,
            {series.series_instance_uid: series.files for series in tcga_study.values()},
        )
    )
    run_step("select", workspace.root, step_settings)
    converted = run_step("convert", workspace.root, step_settings)

    mask_record = workspace.read_brain_mask_record()
    assert mask_record is not None and mask_record.on is Role.T1C
    assert mask_record.series_instance_uid == tcga_study["t1c"].series_instance_uid
    extraction = converted["brain_extraction"]
    assert isinstance(extraction, dict) and extraction["on"] == "t1c"
    assert 1300 < extraction["volume_ml"] < 1800  # 1554 ml measured on this T1c
    mask = sitk.GetArrayFromImage(read_image(workspace, workspace.brain_mask_path)) > 0
    t1c = read_volume(workspace, Role.T1C).image
    assert mask.shape == sitk.GetArrayFromImage(t1c).shape
    again = sitk.GetArrayFromImage(extract_brain(sitk.Cast(t1c, sitk.sitkFloat32)).mask) > 0
    assert 2 * np.count_nonzero(mask & again) / (mask.sum() + again.sum()) > 0.999

    preprocessed = run_step("preprocess", workspace.root, step_settings)
    used = preprocessed["brain_extraction"]
    assert isinstance(used, dict) and used["ran_during"] == "convert"
    assert used["volume_ml"] == extraction["volume_ml"]

    # A mask recorded for another series is never applied: preprocess extracts its own.
    record_path = workspace.brain_mask_record_path
    tampered = json.loads(record_path.read_text())
    tampered["series_instance_uid"] = tcga_study["t1"].series_instance_uid
    record_path.write_text(json.dumps(tampered))
    redone = run_step("preprocess", workspace.root, step_settings)["brain_extraction"]
    assert isinstance(redone, dict) and "ran_during" not in redone
