"""segnode's results as a radiologist sees them: OHIF 3.13.2 in a real (headless) browser.

Once per module: the four-series TCGA-FG-6692 study goes through ``segnode run`` (TTA off,
SEG + SR + SC + PDF), the study and every result object into a private Orthanc with DICOMweb,
OHIF's built viewer is served on the same loopback origin with a proxy to Orthanc
(tests/viewer/server.py), and tests/viewer/driver.cjs opens the study in Debian's Chromium,
double-clicks the SEG, SR, SC and PDF thumbnails, answers OHIF's prompts, and reports what it saw.
Each test below judges one part of that report; screenshots and the report land in the
artefacts folder each failure names (``test-artifacts/viewer/`` or ``$SEGNODE_TEST_ARTIFACTS/viewer``).

Needs what scripts/install-viewer installs (run by scripts/test); without it the tests skip
with a loud "VIEWER MISSING" reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from typer.testing import CliRunner

from segnode.node.cli import app
from tests.fixtures.dicom_study import BuiltSeries
from tests.helpers import REPO_ROOT
from tests.orthanc import Orthanc
from tests.viewer import checks
from tests.viewer.install import ViewerInstall, require_viewer
from tests.viewer.server import ViewerServer

DRIVER = Path(__file__).resolve().parent / "driver.cjs"
#: How long the driver waits for any one thing on the page (the study opening, a display set).
PAGE_TIMEOUT_MS = 45_000
DRIVER_TIMEOUT_S = 180


def artefacts_dir() -> Path:
    base = os.environ.get("SEGNODE_TEST_ARTIFACTS")
    return (Path(base) if base else REPO_ROOT / "test-artifacts") / "viewer"


@dataclass(frozen=True)
class ViewerRun:
    """What the driver reported, and what the result files say."""

    report: dict[str, Any]
    artefacts: Path
    tumour: checks.TumourSlice
    volumes: dict[Any, float]
    series: dict[str, str]  # kind ("seg", "sr", "sc", "pdf", "t1c") → SeriesInstanceUID
    proxy_failures: list[str]
    seconds: dict[str, float]

    def step(self, name: str) -> dict[str, Any]:
        step: dict[str, Any] = self.report.get("steps", {}).get(name) or {}
        if not step:
            pytest.fail(f"the driver did not reach the {name!r} step{self.where()}; fatal: "
                        f"{self.report.get('fatal')}; open step: {self.report.get('steps', {}).get('open')}")
        if "error" in step:
            pytest.fail(f"the {name!r} step failed in the browser: {step['error']}{self.where()}")
        return step

    def where(self, screenshot: str | None = None) -> str:
        shown = f" (screenshot {self.artefacts / screenshot})" if screenshot else ""
        return f"{shown}; artefacts in {self.artefacts}"


def run_pipeline(study_dir: Path, work: Path) -> dict[str, Any]:
    config = work / "site.toml"
    config.write_text("[model]\ntta = false\n")
    result = CliRunner().invoke(
        app,
        ["run", str(study_dir), "--out", str(work / "out"), "--outputs", "seg,sr,sc,pdf",
         "--config", str(config), "--data-dir", str(work / "data"), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.output)
    return summary


def run_driver(install: ViewerInstall, plan: dict[str, Any], work: Path) -> dict[str, Any]:
    plan_path, result_path = work / "plan.json", work / "result.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    try:
        completed = subprocess.run(
            [install.node, str(DRIVER), str(plan_path), str(result_path)],
            capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")  # bytes, even with text=True
        pytest.fail(f"the browser driver ran past {DRIVER_TIMEOUT_S} s; artefacts so far in "
                    f"{plan['artefacts']}:\n{stderr[-3000:]}")
    if not result_path.is_file():
        pytest.fail(f"the browser driver wrote no report (exit {completed.returncode}):\n"
                    f"{completed.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(result_path.read_text())
    report["driverExit"] = completed.returncode
    report["driverStderr"] = completed.stderr[-3000:]
    return report


@pytest.fixture(scope="module")
def viewer_run(tcga_study: dict[str, BuiltSeries], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerRun]:
    install = require_viewer()
    artefacts = artefacts_dir()
    shutil.rmtree(artefacts, ignore_errors=True)  # no stale screenshot from an earlier run
    artefacts.mkdir(parents=True)
    work = tmp_path_factory.mktemp("viewer")
    seconds: dict[str, float] = {}

    started = time.monotonic()
    summary = run_pipeline(tcga_study["t1c"].folder.parent, work)
    seconds["pipeline"] = time.monotonic() - started
    objects = summary["objects"]
    paths = {kind: [Path(o["path"]) for o in objects if o["kind"] == kind] for kind in ("seg", "sr", "sc", "pdf")}
    # The main SEG lies on the T1c; others may lie on registered series (FLAIR, T2).
    t1c_uid = tcga_study["t1c"].series_instance_uid
    [seg_path] = [path for path in paths["seg"] if checks.referenced_series(path) == t1c_uid]
    series = {kind: next(o["series_instance_uid"] for o in objects if o["kind"] == kind) for kind in paths}
    series["seg"] = str(pydicom.dcmread(seg_path, stop_before_pixels=True).SeriesInstanceUID)
    series["t1c"] = t1c_uid
    tumour = checks.largest_tumour_slice(seg_path, tcga_study["t1c"].files)
    volumes = checks.sr_volumes(paths["sr"][0])

    orthanc = Orthanc(work / "orthanc", dicomweb=True).start()
    try:
        started = time.monotonic()
        study_files = [path for built in tcga_study.values() for path in built.files]
        orthanc.upload(study_files + [path for kind in paths.values() for path in kind])
        seconds["upload"] = time.monotonic() - started
        with ViewerServer(install.ohif_dist, orthanc.http_port) as server:
            plan = {
                "playwrightCore": str(install.playwright_core),
                "chromium": str(install.chromium),
                "url": server.url,
                "studyUid": summary["study_instance_uid"],
                "artefacts": str(artefacts),
                "timeoutMs": PAGE_TIMEOUT_MS,
                "seg": {"seriesUid": series["seg"], "sourceSeriesUid": series["t1c"],
                        "sopInstanceUid": tumour.sop_instance_uid,
                        "worldPoints": tumour.geometry.reference_points()},
                "sr": {"seriesUid": series["sr"]},
                "sc": {"seriesUid": series["sc"]},
                "pdf": {"seriesUid": series["pdf"]},
            }
            started = time.monotonic()
            report = run_driver(install, plan, work)
            seconds["browser"] = time.monotonic() - started
            proxy_failures = [f"{r.method} {r.path} -> {r.status}" for r in server.failed_requests()]
    finally:
        orthanc.stop()
    report["seconds"] = seconds
    (artefacts / "report.json").write_text(json.dumps(report, indent=1))
    yield ViewerRun(report, artefacts, tumour, volumes, series, proxy_failures, seconds)


def test_seg_overlay_lies_on_the_tumour_in_the_t1c_viewport(viewer_run: ViewerRun) -> None:
    seg = viewer_run.step("seg")
    where = viewer_run.where(seg.get("screenshot"))
    viewport = seg["viewport"]
    assert viewport.get("seriesUid") == viewer_run.series["t1c"], (
        f"OHIF shows the SEG over series {viewport.get('seriesUid')}, not the T1c{where}")
    assert seg["representations"], f"no segmentation is drawn in the viewport{where}"
    observed = checks.coloured_pixels(viewer_run.artefacts / seg["canvas"])
    mapping = checks.CanvasMapping.from_points(seg["canvasPoints"])
    verdict = checks.judge_overlay(observed, viewer_run.tumour, mapping)
    (viewer_run.artefacts / "overlay-verdict.json").write_text(json.dumps(verdict.__dict__, indent=1))
    assert not verdict.problems(), (
        f"SEG overlay on the slice of largest tumour area "
        f"({viewer_run.tumour.area_mm2:.0f} mm², image {seg['imageIndex'] + 1}): "
        f"{'; '.join(verdict.problems())}; {verdict}{where}")


def test_sr_lists_each_region_with_its_volume_in_the_measurement_panel(viewer_run: ViewerRun) -> None:
    sr = viewer_run.step("sr")
    rows = [checks.PanelRow.of(row) for row in sr["rows"]]
    problems = checks.panel_problems(rows, viewer_run.volumes)
    volumes = {str(region): round(value, 2) for region, value in viewer_run.volumes.items()}
    assert not problems, (
        f"OHIF's measurement panel after opening the SR: {'; '.join(problems)}. "
        f"SR volumes (ml): {volumes}; panel: {sr['panelText']!r}; viewport badge: {sr['badge']}; "
        f"OHIF prompt: {sr['prompt']!r}; measurementService: {sr['measurements']}. "
        f"(An SR OHIF cannot rehydrate is drawn but listed as 'Measurements (0)': "
        f"../shared/stack-notes.md \"Seen 2026-12-02\"){viewer_run.where(sr.get('screenshot'))}")


def test_sc_and_pdf_open_in_a_viewport(viewer_run: ViewerRun) -> None:
    sc = viewer_run.step("sc")
    where = viewer_run.where(sc.get("screenshot"))
    assert sc["viewport"].get("seriesUid") == viewer_run.series["sc"], f"SC not in the viewport: {sc['viewport']}{where}"
    stats = sc["stats"]
    assert stats["lit"] > 0.05 * stats["pixels"], f"the SC viewport is (nearly) black: {stats}{where}"
    assert stats["coloured"] > 0, f"the SC's colour (burned-in regions and legend) is not shown: {stats}{where}"

    pdf = viewer_run.step("pdf")
    document = pdf["document"]
    where = viewer_run.where(pdf.get("screenshot"))
    assert document["tag"] in {"object", "iframe", "embed"}, f"no PDF element in the viewport: {document}{where}"
    assert document["magic"] == "%PDF-" and document["bytes"] > 1000, (
        f"the PDF viewport's document is not the encapsulated PDF: {document}{where}")


def test_no_console_error_while_opening_every_result(viewer_run: ViewerRun) -> None:
    report = viewer_run.report
    for name in ("open", "seg", "sr", "sc", "pdf"):
        viewer_run.step(name)  # a step that failed is reported as such, not as console noise
    problems = checks.console_problems(report["console"], report["pageErrors"])
    problems += [f"failed request: {failure}" for failure in report["failedRequests"]]
    problems += [f"DICOMweb proxy: {failure}" for failure in viewer_run.proxy_failures]
    problems += [f"request to another origin (blocked): {url}" for url in report["blocked"]]
    assert not problems, "\n".join(problems) + viewer_run.where()
