"""Jobs through the real pipeline in an in-process node: failures, cancel, retry, resume.

The study is TCGA-FG-6692's native series written as DICOM (tests/fixtures/dicom_study.py);
TTA is off to keep it fast. No destination is configured, so a job ends at ``done`` once
its results are written (delivery has its own tests against Orthanc and DCMTK).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from segnode.node.cli import app
from segnode.node.service import Node
from segnode.storage.job_states import TERMINAL
from segnode.storage.models import Job, JobEvent
from tests.conftest import FAST_COMPLETION
from tests.fixtures.dicom_study import BuiltSeries
from tests.helpers import require_shared_data, storescu, wait_for

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(600)]

JOBS_ON = {"enabled": True, "poll_interval_s": 0.2, "initial_backoff_s": 0.5}


def job_when(
    node: Node, predicate: Callable[[Job], bool], what: str, timeout_s: float = 300
) -> Job:
    def check() -> Job | None:
        with node.sessions() as session:
            job = session.execute(select(Job).order_by(Job.id.desc()).limit(1)).scalar_one_or_none()
            return job if job is not None and predicate(job) else None

    return wait_for(check, timeout_s, what, interval_s=0.05)


def event_kinds(node: Node, job_id: int) -> list[str]:
    with node.sessions() as session:
        return list(
            session.execute(
                select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            ).scalars()
        )


def cli(node: Node, *args: str) -> Any:
    return CliRunner().invoke(
        app, [*args, "--data-dir", str(node.settings.storage.data_dir)], catch_exceptions=False
    )


def test_a_study_without_flair_is_not_applicable_naming_what_it_had_and_retry_runs_it_again(
    start: Callable[..., Node], tcga_study: dict[str, BuiltSeries]
) -> None:
    # No stand-ins: every sequence is required (the default lets the T2 stand in for the FLAIR).
    node = start(
        completion=FAST_COMPLETION,
        jobs=JOBS_ON,
        model={"tta": False},
        selection={"substitutes": []},
    )
    files = [p for role in ("t1", "t1c", "t2") for p in tcga_study[role].files]
    assert storescu(node.scp.port, files).returncode == 0
    job = job_when(node, lambda j: j.state == "not_applicable", "the job to end not applicable")
    assert job.failed_step == "selecting" and job.finished_at is not None
    assert job.error is not None and job.error.startswith("not applicable: missing FLAIR")
    assert event_kinds(node, job.id)[-1] == "not_applicable"
    with node.sessions() as session:
        event = session.execute(
            select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id.desc()).limit(1)
        ).scalar_one()
    assert event.detail["missing"] == ["flair"]
    taken = sorted(series["taken_as"] for series in event.detail["series"])
    assert taken == ["t1", "t1c", "t2"]
    assert {s["series_instance_uid"] for s in event.detail["series"]} == {
        tcga_study[role].series_instance_uid for role in ("t1", "t1c", "t2")
    }

    result = cli(node, "jobs", "retry", str(job.id))
    assert result.exit_code == 0 and "attempt 2, resumes at selecting" in result.output
    job = job_when(
        node,
        lambda j: j.state == "not_applicable" and j.attempt == 2,
        "the retried job to end again",
    )
    assert "retry" in event_kinds(node, job.id)
    assert (
        cli(node, "jobs", "cancel", str(job.id)).exit_code == 1
    )  # a finished job cannot be cancelled


def test_a_missing_flair_is_stood_in_for_by_the_t2_and_the_job_recommends_review(
    start: Callable[..., Node], tcga_study: dict[str, BuiltSeries]
) -> None:
    node = start(completion=FAST_COMPLETION, jobs=JOBS_ON, model={"tta": False})
    files = [p for role in ("t1", "t1c", "t2") for p in tcga_study[role].files]
    assert storescu(node.scp.port, files).returncode == 0
    job = job_when(node, lambda j: j.state == "done", "the job to finish")
    assert job.review_recommended is True
    flags = {(flag["check"], flag.get("role")) for flag in job.quality_flags or []}
    assert ("missing_sequence", "flair") in flags
    folder = Path(node.store.data_dir) / "jobs" / str(job.id)
    selection = json.loads((folder / "selection.json").read_text())
    assert selection["substitutes"] == {"flair": "t2"}
    assert (
        selection["roles"]["flair"]["series_instance_uid"] == tcga_study["t2"].series_instance_uid
    )
    # The stand-in is not "moved" against itself: the T2 gets its own SEG, no SEG on "FLAIR".
    outputs = sorted(p.name.split("-")[0] for p in (folder / "outputs").iterdir())
    assert outputs == ["seg", "seg", "sr"]


def test_cancel_during_a_step_stops_the_job_and_retry_resumes_it_to_done(
    start: Callable[..., Node], tcga_study: dict[str, BuiltSeries]
) -> None:
    node = start(completion=FAST_COMPLETION, jobs=JOBS_ON, model={"tta": False})
    files = [p for series in tcga_study.values() for p in series.files]
    assert storescu(node.scp.port, files).returncode == 0
    job = job_when(node, lambda j: j.state == "preprocessing", "preprocessing to start")
    # One association with all four sequences: fired on its release, not after a quiet time.
    assert job.trigger.startswith(
        "complete: every association that delivered to the study was released"
    )
    assert "s after the last instance" in job.trigger

    result = cli(node, "jobs", "cancel", str(job.id), "--reason", "test")
    assert result.exit_code == 0
    # The step in flight finishes in its worker; its outcome is discarded, nothing runs after it.
    wait_for(lambda: "inferring" not in event_kinds(node, job.id) or None, 5, "no further step")
    job = job_when(node, lambda j: j.state == "cancelled", "the job to be cancelled")
    assert job.failed_step == "preprocessing"

    assert cli(node, "jobs", "retry", str(job.id)).exit_code == 0
    job = job_when(node, lambda j: j.state == "done", "the resumed job to finish")
    kinds = event_kinds(node, job.id)
    assert kinds.count("preprocessing") == 1 and kinds.count("converting") == 1  # not redone
    assert kinds[-1] == "done" and job.model_id == "segnode-brats22-v1"
    folder = Path(node.store.data_dir) / "jobs" / str(job.id)
    outputs = sorted(p.name.split("-")[0] for p in (folder / "outputs").iterdir())
    assert outputs == ["seg", "seg", "seg", "sr"]  # the T1c's SEG, and the moved FLAIR's and T2's
    # Done: the bulky intermediates are pruned (right after the commit); the rest stays.
    wait_for(lambda: not (folder / "preprocessed" / "channels.npz").exists() or None, 10, "pruning")
    assert not list(folder.glob("volumes/*.mha")) and list(folder.glob("volumes/*.json"))
    assert (folder / "inference" / "labels_source.mha").is_file() and (
        folder / "results.json"
    ).is_file()

    shown = cli(node, "jobs", "show", str(job.id))
    assert '"state": "done"' in shown.output and '"model_sha256": "' in shown.output


def test_a_step_past_its_timeout_retries_with_backoff_then_fails_naming_the_attempts(
    start: Callable[..., Node], tcga_study: dict[str, BuiltSeries]
) -> None:
    """A real transient failure: each step runs in a fresh worker that needs seconds to import
    its libraries, so a 0.3 s step limit is always exceeded; the worker is killed each time."""
    jobs = {**JOBS_ON, "step_timeout_s": 0.3, "max_attempts": 2, "initial_backoff_s": 0.2}
    node = start(completion=FAST_COMPLETION, jobs=jobs)
    assert storescu(node.scp.port, tcga_study["t1"].files).returncode == 0
    job = job_when(node, lambda j: j.state == "failed", "the job to fail", timeout_s=60)
    assert job.failed_step == "selecting"
    assert job.error is not None and "ran longer than 0.3 s" in job.error
    assert job.error.endswith("(after 2 attempts)")
    kinds = event_kinds(node, job.id)
    assert kinds.count("step_retry") == 1 and kinds[-1] == "failed"


def test_an_fmri_study_routed_by_brain_mr_ends_not_applicable_not_failed(
    start: Callable[..., Node],
) -> None:
    """Real data: GE MR750 axial EPI (150 images of an fMRI run). The default routing sends
    every brain MR to the node; the job must end ``not_applicable`` naming what was missing."""
    folder = require_shared_data() / "ge_mr750_3T_axial_EPI_human"
    node = start(completion=FAST_COMPLETION, jobs=JOBS_ON, model={"tta": False})
    assert storescu(node.scp.port, sorted(folder.glob("*.dcm"))).returncode == 0
    job = job_when(node, lambda j: j.state in TERMINAL, "the fMRI job to end")
    assert job.state == "not_applicable" and job.routing_rule == "brain-mr"
    assert job.error is not None and job.error.startswith("not applicable: missing T1, T1C")
    listed = cli(node, "jobs", "list")
    assert "not_applicable" in listed.output and "failed" not in listed.output
