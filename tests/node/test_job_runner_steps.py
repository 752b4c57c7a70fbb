"""The job runner's drive loop with scripted steps: seconds, no worker processes, no pipeline.

``JobRunner(pool=...)`` is the seam: a scripted pool answers each pipeline step in this
process, so what is tested is the runner's own part (the machine's order, the inputs it
gathers, the models it records, a transient error postponed, a permanent one failing the job)
on a real database. The real steps run in ``test_job_runner.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.jobs.runner import JobRunner, job_workspace
from segnode.node.service import open_storage
from segnode.pipeline.errors import PipelineError
from segnode.pipeline.quality.record import QaCheck, QaFlag, QualityReport
from segnode.pipeline.steps import STEP_ORDER
from segnode.pipeline.workspace import InferenceRecord, ModelIdentity, Workspace
from segnode.storage.instances import record_instance
from segnode.storage.job_states import JobState
from segnode.storage.jobs import create_job
from segnode.storage.models import Job, JobEvent
from segnode.vocabulary import LabelConvention, Role
from tests.storage.records import instance_record


class ScriptedPool:
    """Stands in for the worker pool: each step returns its scripted record or raises it."""

    def __init__(self, script: Mapping[str, Any]) -> None:
        self.script = dict(script)
        self.steps: list[str] = []

    def run(self, timeout_s: float | None, function: Callable[..., Any], step: str, *args: Any) -> Any:
        self.steps.append(step)
        answer = self.script.get(step, {"step": step})
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, InferenceRecord):  # the infer step writes its record into the job folder
            Workspace(args[0]).write_inference(answer)
            return answer.model_dump(mode="json")
        if isinstance(answer, QualityReport):  # so does the write step, its quality report
            Workspace(args[0]).write_quality(answer)
            return {"quality": answer.model_dump(mode="json")}
        return answer

    def warm(self, function: Callable[..., Any], *args: Any) -> None:
        self.steps.append("warm")

    def close(self) -> None:
        pass


def _runner(settings: Settings, script: Mapping[str, Any]) -> tuple[JobRunner, ScriptedPool, int]:
    _, sessions, store = open_storage(settings)
    with sessions.begin() as session:
        recorded = [
            record_instance(session, instance_record(f"1.2.3.1.{n}", "1.2.3.1")) for n in (1, 2)
        ]
        job = create_job(
            session,
            study_id=recorded[0].study_id,
            trigger="test",
            routing_rule=None,
            series_ids={r.series_id for r in recorded},
            detail={},
        )
        job_id = job.id
    pool = ScriptedPool(script)
    return JobRunner(settings, sessions, store, pool=pool), pool, job_id


def _job(sessions: sessionmaker[Session], job_id: int) -> tuple[Job, list[str]]:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        kinds = session.execute(select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return job, list(kinds.scalars())


MODELS = InferenceRecord(
    models=(
        ModelIdentity(id="segnode-a", version="1", sha256="a" * 64),
        ModelIdentity(id="segnode-b", version="1", sha256="b" * 64),
    ),
    label_convention=LabelConvention.BRATS_2021,
    grid_label_voxels={0: 1},
    postprocessing={},
    device="cpu",
    tta=False,
)


def test_a_job_runs_every_step_in_the_machines_order_to_done(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(jobs={"keep_intermediates": True})
    runner, pool, job_id = _runner(settings, {"infer": MODELS})
    runner.run_job(job_id)
    job, kinds = _job(runner._sessions, job_id)
    assert pool.steps == list(STEP_ORDER)
    assert job.state is JobState.DONE
    assert kinds == ["created", "selecting", "converting", "preprocessing", "inferring", "writing", "sending", "done"]
    assert (job.model_id, job.model_sha256) == ("segnode-a+segnode-b", "a" * 64)
    inputs = job_workspace(runner._store.data_dir, job_id).read_inputs()
    assert inputs.study_instance_uid == "1.2.3"
    [series] = inputs.series
    assert series.series_instance_uid == "1.2.3.1"
    assert [Path(path).name for path in series.files] == ["1.2.3.1.1.dcm", "1.2.3.1.2.dcm"]


def test_a_transient_error_postpones_the_step_and_a_permanent_one_fails_the_job(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(jobs={"max_attempts": 3, "initial_backoff_s": 60})
    runner, pool, job_id = _runner(settings, {"convert": ConnectionResetError("disk gone")})
    runner.run_job(job_id)
    job, kinds = _job(runner._sessions, job_id)
    assert (job.state, job.step_attempt) == (JobState.CONVERTING, 1)
    assert job.next_attempt_at is not None and kinds[-1] == "step_retry"
    runner.run_job(job_id)  # not due yet: nothing runs
    assert pool.steps == ["select", "convert"]

    pool.script["convert"] = PipelineError("slice spacing not uniform")
    with runner._sessions.begin() as session:
        session.get(Job, job_id).next_attempt_at = None
    runner.run_job(job_id)
    job, kinds = _job(runner._sessions, job_id)
    assert (job.state, job.failed_step) == (JobState.FAILED, "converting")
    assert job.error == "converting: slice spacing not uniform" and kinds[-1] == "failed"


def test_the_write_steps_quality_verdict_lands_on_the_job_row(
    make_settings: Callable[..., Settings],
) -> None:
    flag = QaFlag(check=QaCheck.MOTION, role=Role.FLAIR, summary="FLAIR is 16.2 mm / 1.0° from the T1c")
    report = QualityReport(flags=(flag,), checked=(QaCheck.MOTION,))
    runner, _, job_id = _runner(make_settings(), {"infer": MODELS, "write": report})
    with runner._sessions() as session:
        assert session.get(Job, job_id).review_recommended is None  # not assessed yet
    runner.run_job(job_id)
    job, _ = _job(runner._sessions, job_id)
    assert job.state is JobState.DONE
    assert job.review_recommended is True
    assert job.quality_flags == [
        {"check": "motion", "summary": "FLAIR is 16.2 mm / 1.0° from the T1c", "role": "flair"}
    ]


def test_a_clean_quality_report_records_no_review(make_settings: Callable[..., Settings]) -> None:
    report = QualityReport(checked=(QaCheck.MOTION, QaCheck.NOT_A_BRAIN))
    runner, _, job_id = _runner(make_settings(), {"infer": MODELS, "write": report})
    runner.run_job(job_id)
    job, _ = _job(runner._sessions, job_id)
    assert (job.review_recommended, job.quality_flags) == (False, [])
