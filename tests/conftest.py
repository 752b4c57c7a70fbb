"""Fixtures shared by the whole suite, and the hooks that sort it into lanes.

Lanes: ``slow`` and ``e2e`` are assigned here, centrally, from the test's file and fixtures
(test files carry no lane markers), so ``scripts/test --fast`` (``-m "not slow and not e2e"``)
stays fast when a test is added to a slow file. A run that skipped tests for missing data,
tools or services ends with a loud summary: such a run is not a full one.
"""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from segnode.config.settings import Settings, load_settings
from segnode.node.service import Node, start_node
from tests.helpers import REAL_DATA_MISSING, SHARED_DATA, free_port

# The four-series TCGA study fixture (tcga_study, tcga_native), for every test folder.
pytest_plugins = ["tests.fixtures.study_fixtures"]

POSTGRES_ADMIN_URL = os.environ.get(
    "SEGNODE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(autouse=True, scope="session")
def _strict_pydicom() -> Iterator[None]:
    """Like highdicom's suite: what we write must be valid, not merely readable."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = previous


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


FAST_COMPLETION = {
    "check_interval_s": 0.2,
    "profiles": {
        "default": {
            "series_quiet_s": 1.0,
            "study_quiet_s": 1.5,
            "association_release_hint": True,
            "release_grace_s": 0.5,
            "required_series": [],
            "deadline_s": 600.0,
            "deadline_action": "proceed",
        }
    },
}


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings on a fresh data dir and port; keyword dicts are merged in."""

    def build(**sections: Any) -> Settings:
        overrides = deep_merge(
            {
                "storage": {"data_dir": str(tmp_path / "data"), "min_free_disk_mb": 1},
                "listener": {"port": free_port(), "acse_timeout_s": 5, "dimse_timeout_s": 10},
                "logging": {"level": "INFO"},
                # Receiving tests look at queued jobs; tests of the pipeline turn jobs on.
                "jobs": {"enabled": False},
                # The dashboard tests start it on a port of their own.
                "web": {"enabled": False},
            },
            sections,
        )
        return load_settings(None, overrides)

    return build


@pytest.fixture
def start(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Node]]:
    """Start in-process nodes; all are stopped at teardown."""
    nodes: list[Node] = []

    def launch(settings: Settings | None = None, **sections: Any) -> Node:
        node = start_node(settings or make_settings(**sections))
        nodes.append(node)
        return node

    yield launch
    for node in nodes:
        node.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"segnode_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.skip(
            f"POSTGRESQL UNAVAILABLE at {POSTGRES_ADMIN_URL}: {exc.orig}. "
            "`scripts/test` installs and starts it; set SEGNODE_TEST_POSTGRES_URL to use another."
        )
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both supported backends; storage tests run against each."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'segnode.db'}"
    base: str = request.getfixturevalue("postgres_url")
    # A fresh schema per test keeps tests independent on one database.
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return f"{base}?options=-csearch_path%3D{schema}"


# --- Lanes ---------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent

#: Folders (under tests/) whose every test talks to real peers: Orthanc, DCMTK, TLS, kill -9.
E2E_FOLDERS = frozenset({"integration", "distributed", "deploy"})

#: Where a test runs the CPU pipeline, brain extraction, registration, training or inference
#: for more than a few seconds, or builds the wheel: a test file (relative to tests/), one test
#: of it (``file::test``, every parameter) or one parameter (``file::test[id]``). Measured on
#: 2 cores: what stays out of this list keeps `scripts/test --fast` under two minutes.
SLOW = frozenset({
    "node/test_job_runner.py",  # three whole CPU pipelines
    "node/test_run_command.py",  # `segnode run`: a whole CPU pipeline
    "node/test_model_commands.py",  # predict/evaluate on the real case
    "node/test_train_command.py",  # training epochs on real cases
    "node/test_worker_pool.py",  # spawned workers import torch and run inference (16 s)
    "pipeline/test_brain_extraction.py",  # deepbet on a real head scan
    "pipeline/test_registration.py",  # rigid registrations of real series
    "pipeline/test_preprocessing.py",  # brain extraction + three registrations
    "pipeline/test_conversion.py::test_matches_dicom2nifti_on_the_philips_3d_series",  # 14 s
    "pipeline/test_conversion.py::test_structural_series_convert"
    "[philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic]",  # 6 s
    "pipeline/test_conversion.py::test_compressed_series_decode_to_the_same_voxels",  # 8 s
    "pipeline/model/test_export.py",  # exports and reloads a SegResNet (7 s)
    "pipeline/model/test_backend.py",  # OpenVINO exports (5-10 s each) and the default model on real cases
    "pipeline/test_steps.py::test_convert_extracts_the_brain_meanwhile_and_preprocess_uses_that_mask",  # ~25 s
    "pipeline/model/test_losses.py::test_split_terms_reproduce_monais_combined_vae_loss",  # VAE forwards
    "pipeline/model/test_losses.py::test_vae_branch_takes_channels_last_tensors_where_monai_fails",
    "pipeline/model/test_losses.py::test_eval_mode_has_no_vae_terms",
    "pipeline/model/test_registry.py::test_zip_import_loads_a_network_equal_to_the_original",
    "pipeline/model/test_registry.py::test_float16_weights_load_into_a_float32_network",
    "pipeline/model/test_recipes_and_cv.py::test_cross_validation_reports_every_held_out_case_once",
    "pipeline/model/test_recipes_and_cv.py::test_training_a_recipe_on_two_real_cases_lowers_the_loss",
    "pipeline/model/test_recipes_and_cv.py::test_every_recipe_builds_and_its_loss_has_a_gradient",
    "pipeline/model/test_recipes_and_cv.py::test_ensemble_folder_is_the_mean_of_its_members",
    "pipeline/model/test_shipped_models.py::test_the_default_model_segments_a_shared_case_with_diagonal_label_confusion",
    "pipeline/model/test_shipped_models.py::test_the_default_model_on_a_patient_none_of_its_members_saw",
    "pipeline/model/test_shipped_models.py::test_the_reference_model_reaches_wt_dice_on_its_training_case",
    "pipeline/model/test_training.py::test_training_steps_reduce_the_loss_on_a_real_case",
    "pipeline/model/test_training.py::test_two_epochs_write_a_model_folder_and_a_resumed_run_matches_an_unbroken_one",
    "pipeline/model/test_training.py::test_a_run_from_init_weights_records_the_model_and_validates_each_case",
    "pipeline/model/test_training.py::test_fp16_weights_and_a_case_named_twice",  # trains on real cases
    "test_wheel.py",  # builds, installs and runs the wheel
    "viewer/test_ohif_viewer.py",  # `segnode run`, Orthanc and OHIF in headless Chromium (50-90 s)
    "web/test_dashboard_browser.py",  # a real job through the CPU pipeline, in Chromium (40-60 s)
})

#: Fixtures that make any test using them slow, wherever the test (or the fixture) moves.
SLOW_FIXTURES = frozenset({
    "extracted",  # deepbet brain extraction of a real head scan
    "network",  # tests/pipeline/model/test_inference.py: a SegResNet run forward (about 2 s a test)
    "t2_onto_t1c",  # a rigid registration of two real series
    "moved_series_job",  # tests/pipeline/test_series_labels.py: convert, preprocess, write (~25 s)
    "wheel",  # builds the wheel
    "fresh_venv",  # a venv with the built wheel installed
})

#: A test that asks for more than the suite's 300 s timeout is slow by its own account.
SLOW_TIMEOUT_S = 300


def _lane_path(item: pytest.Item) -> str | None:
    try:
        return item.path.resolve().relative_to(TESTS).as_posix()
    except ValueError:  # a test file outside tests/ (run by path): no lane
        return None


def _asks_for_a_long_timeout(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("timeout")
    return bool(marker and marker.args and float(marker.args[0]) > SLOW_TIMEOUT_S)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``e2e`` and ``slow`` from the test's file, fixtures and timeout."""
    for item in items:
        path = _lane_path(item)
        if path is None:
            continue
        if path.split("/", 1)[0] in E2E_FOLDERS:
            item.add_marker(pytest.mark.e2e)
        test = getattr(item, "originalname", item.name)  # without the [parameter id]
        names = {path, f"{path}::{test}", f"{path}::{item.name}"}
        fixtures = getattr(item, "fixturenames", ())
        if (not SLOW.isdisjoint(names) or not SLOW_FIXTURES.isdisjoint(fixtures)
                or _asks_for_a_long_timeout(item)):
            item.add_marker(pytest.mark.slow)


# --- The skip summary ----------------------------------------------------------------------------

#: A loud skip reason starts with an upper-case label of two or more words ("REAL DATA
#: MISSING: ...", "TOOL MISSING: ...", "POSTGRESQL UNAVAILABLE at ..."): the environment lacked
#: something, as opposed to a test that does not apply here.
LOUD_LABEL = re.compile(r"[A-Z0-9]{2,}(?: [A-Z0-9]{2,})+(?=$|[\s:(])")
#: Reasons printed per label; the rest are counted.
REASONS_SHOWN = 6
#: What the final summary line says after a run with loud skips.
NOT_A_FULL_RUN = "warning: NOT A FULL RUN"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say how many tests skipped and why, grouped; loudly, when the run is not a full one.

    Why: without ../shared/data most tests that check real scanner data skip, and a run with
    a screen of dots and "passed" then looks green while proving little.
    """
    reasons = Counter(_skip_reason(report) for report in terminalreporter.stats.get("skipped", []))
    unused = sorted({name for name in SLOW if not (TESTS / name.split("::")[0]).is_file()})
    if unused:
        terminalreporter.write_line(
            f"lanes: tests/conftest.py SLOW names files that do not exist: {', '.join(unused)}",
            yellow=True,
        )
    if not reasons:
        return
    by_label: dict[str, Counter[str]] = defaultdict(Counter)
    for reason, count in reasons.items():
        match = LOUD_LABEL.match(reason)
        by_label[match.group(0) if match else "other skips"][reason] += count
    loud = sorted(label for label in by_label if label != "other skips")
    skipped = sum(reasons.values())
    passed = len(terminalreporter.stats.get("passed", []))
    title = f"NOT A FULL RUN: {skipped} skipped" if loud else f"{skipped} skipped"
    terminalreporter.write_sep("!" if loud else "-", f"{title}, {passed} passed", red=bool(loud),
                               bold=bool(loud))
    for label in [*loud, "other skips"]:
        group = by_label.get(label)
        if not group:
            continue
        terminalreporter.write_line(f"{sum(group.values()):5d}  {label}", bold=True)
        for reason, count in group.most_common(REASONS_SHOWN):
            terminalreporter.write_line(f"{count:9d}  {reason}")
        if len(group) > REASONS_SHOWN:
            rest = sum(count for _, count in group.most_common()[REASONS_SHOWN:])
            more = len(group) - REASONS_SHOWN
            terminalreporter.write_line(f"{rest:9d}  (in {more} more reasons)")
    if not loud:
        return
    if REAL_DATA_MISSING in loud:
        terminalreporter.write_line(
            f"{REAL_DATA_MISSING}: {SHARED_DATA} is absent (../shared/data, or "
            "SEGNODE_SHARED_DATA), so the tests on real scanner data did not run.",
            red=True, bold=True,
        )
    terminalreporter.write_line(
        "THIS IS NOT A FULL RUN: do not read it as green. Provide what is missing above "
        "(`scripts/test` installs the tools and PostgreSQL) and run again.", red=True, bold=True,
    )
    # An entry of a status pytest does not know turns the final "N passed" line yellow and
    # names itself there ("..., 1 warning: NOT A FULL RUN"); the exit status stays pytest's.
    terminalreporter.stats.setdefault(NOT_A_FULL_RUN, []).append(NOT_A_FULL_RUN)
