"""The dashboard in a real browser (Playwright driving Debian's Chromium) against a real node.

One story, as an operator lives it: sign in; a study arrives by C-STORE and its job runs the
real CPU pipeline, the pages following it without a reload; the job fails at sending (the
PACS is down) and the timeline says why; the PACS comes back, Retry, and the same page shows
the job done with its result preview; the rule tester on a real file; the quarantine entry
of a refused instance; a viewer cannot retry; the audit page shows who did what.
Screenshots of every step are kept in ``test-artifacts/web/`` (``$SEGNODE_TEST_ARTIFACTS``);
the ones docs/operations.md shows are copied to docs/images/ when SEGNODE_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from segnode.node.admin.accounts import add_user
from segnode.node.admin.actors import command_line_actor
from segnode.node.service import Node
from segnode.storage.models import UserRole
from tests.conftest import FAST_COMPLETION
from tests.fixtures.dicom_study import BuiltSeries
from tests.helpers import (
    REPO_ROOT,
    TOOL_MISSING,
    dcmtk_env,
    free_port,
    require_shared_data,
    require_tool,
    storescu,
    wait_for_port,
)

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
DOCS_IMAGES = REPO_ROOT / "docs" / "images"
PIPELINE_S = 300_000  # ms the page may wait for the CPU pipeline
VIEWER_PASSWORD = "a viewer's long password"


def artefacts() -> Path:
    base = os.environ.get("SEGNODE_TEST_ARTIFACTS")
    folder = (Path(base) if base else REPO_ROOT / "test-artifacts") / "web"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{TOOL_MISSING}: {CHROMIUM} (Debian package chromium; scripts/install-viewer installs it)")
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


class Pacs:
    """DCMTK storescp on a port chosen now, started only when asked (the PACS "comes back")."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [require_tool("storescp"), "-aet", "DCMTK", "-od", str(self.folder), str(self.port)],
            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    peer = Pacs(tmp_path / "pacs")
    yield peer
    peer.stop()


def refused_instance(source: Path, folder: Path) -> Path:
    """A real T1c slice without its Study Instance UID (the listener refuses it: 0xC...)."""
    dataset = pydicom.dcmread(source)
    del dataset.StudyInstanceUID
    path = folder / "no_study_uid.dcm"
    dataset.save_as(path)
    return path


@pytest.mark.timeout(900)
def test_an_operator_follows_a_job_retries_it_after_the_pacs_returns_and_a_viewer_cannot(
    start: Callable[..., Node], tcga_study: dict[str, BuiltSeries], browser: object, pacs: Pacs, tmp_path: Path
) -> None:
    require_tool("storescu")
    shots = artefacts()
    web_port = free_port()
    node = start(
        completion=FAST_COMPLETION,
        jobs={"enabled": True, "poll_interval_s": 0.2},
        model={"tta": False},
        web={"enabled": True, "port": web_port, "refresh_s": 0.5},
        delivery={
            "max_attempts": 1,
            "destinations": [{"name": "pacs", "ae_title": "DCMTK", "host": "127.0.0.1", "port": pacs.port,
                              "timeout_s": 5}],
        },
    )
    base = f"http://127.0.0.1:{web_port}"
    password = (node.settings.storage.data_dir / "initial-admin-password").read_text().strip()
    add_user(node.sessions, command_line_actor(), "vera", UserRole.VIEWER, VIEWER_PASSWORD)
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # 1. Sign in: a wrong password is refused with a message, the right one opens the overview.
    page.goto(f"{base}/jobs")
    assert page.url.startswith(f"{base}/login")
    page.fill("#username", "admin")
    page.fill("#password", "wrong password")
    page.click("button[type=submit]")
    assert "wrong user name or password" in page.inner_text("#login-error")
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/jobs")
    assert "No jobs yet" in page.inner_text("main")
    page.evaluate("window.__notReloaded = true")

    # 2. The study arrives; the job appears and runs to "failed" (the PACS is down): no reload.
    files = [path for series in tcga_study.values() for path in series.files]
    assert storescu(node.scp.port, files).returncode == 0
    page.wait_for_selector("tr[data-job]", timeout=30_000)
    shot("jobs-running")
    page.wait_for_selector("tr[data-job][data-state=failed]", timeout=PIPELINE_S)
    assert page.evaluate("window.__notReloaded") is True
    shot("dashboard-jobs")
    page.goto(f"{base}/")
    assert "listening" in page.inner_text("#card-listener")
    assert "segnode-brats22-v1" in page.inner_text("#card-model")
    shot("dashboard-overview")

    # 3. The job's timeline names the failure; the PACS returns; Retry; done on the same page.
    page.goto(f"{base}/jobs")
    page.click("tr[data-job] a")
    error = page.inner_text("#job-error")
    assert "Failed at sending" in error and "pacs" in error
    kinds = page.eval_on_selector_all("#timeline li", "items => items.map(i => i.dataset.kind)")
    assert kinds[0] == "created" and "inferring" in kinds and kinds[-1] == "failed"
    shot("dashboard-job-failed")
    pacs.start()
    page.click("#retry")
    page.wait_for_selector(".flash.ok", timeout=10_000)
    page.evaluate("window.__notReloaded = true")
    page.wait_for_function("document.querySelector('#job-state').textContent.trim() === 'done'", timeout=60_000)
    assert page.evaluate("window.__notReloaded") is True
    assert "delivered" in page.inner_text("#deliveries")
    images = page.eval_on_selector_all("#preview img", "imgs => imgs.map(i => i.naturalWidth)")
    assert images and all(width > 0 for width in images)
    assert "WT" in page.inner_text("#preview")
    assert len(list(pacs.folder.iterdir())) >= 2  # the SEG and the SR at least
    shot("dashboard-job-done")
    job_url = page.url

    # 4. The rule tester on a real file: the GE EPI (fMRI) matches brain-mr.
    page.goto(f"{base}/rules")
    epi = sorted((require_shared_data() / "ge_mr750_3T_axial_EPI_human").glob("*.dcm"))[0]
    page.set_input_files("#files", str(epi))
    page.click("#rule-tester button[type=submit]")
    assert "brain-mr" in page.inner_text("#decision")
    shot("dashboard-rules")

    # 5. A refused instance shows in the quarantine with its reason.
    refused = refused_instance(tcga_study["t1c"].files[0], tmp_path)
    storescu(node.scp.port, [refused])
    page.goto(f"{base}/quarantine")
    page.wait_for_selector("tr[data-entry]", timeout=10_000)
    assert "Study Instance UID" in page.inner_text("#quarantine") or "StudyInstanceUID" in page.inner_text("#quarantine")
    shot("dashboard-quarantine")

    # 6. A viewer sees the job but has no Retry, and the API refuses it the retry.
    viewer_context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    viewer = viewer_context.new_page()
    signed = viewer.request.post(f"{base}/api/session", data={"username": "vera", "password": VIEWER_PASSWORD})
    assert signed.ok
    viewer.goto(job_url)
    assert viewer.inner_text("#job-state").strip() == "done"
    assert viewer.query_selector("#retry") is None and viewer.query_selector("#job-actions") is None
    job_id = job_url.rsplit("/", 1)[1]
    answer = viewer.request.post(f"{base}/api/jobs/{job_id}/retry",
                                 headers={"X-CSRF-Token": signed.json()["csrf_token"]})
    assert answer.status == 403 and "operator role" in answer.json()["detail"]
    viewer_context.close()

    # 7. The audit page lists the retry and the sign-ins, with who and from where.
    page.goto(f"{base}/audit")
    actions = page.eval_on_selector_all("#audit tr[data-action]", "rows => rows.map(r => r.dataset.action)")
    assert "job.retry" in actions and actions.count("login") >= 3
    shot("dashboard-audit")
    page.goto(f"{base}/users")
    shot("dashboard-users")
    context.close()

    if os.environ.get("SEGNODE_UPDATE_SCREENSHOTS") == "1":
        for name in ("dashboard-overview", "dashboard-jobs", "dashboard-job-failed", "dashboard-job-done",
                     "dashboard-rules", "dashboard-quarantine", "dashboard-audit", "dashboard-users"):
            # A 128-colour palette keeps the documentation's pictures small (tens of kB).
            picture = Image.open(shots / f"{name}.png").convert("RGB")
            picture.quantize(colors=128).save(DOCS_IMAGES / f"{name}.png", optimize=True)
