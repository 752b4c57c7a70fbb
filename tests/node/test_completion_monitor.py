"""Completion applied to the database: jobs, reasons, late series, restarts, routing.

Instances are real scanner files received through the real receiver. Where a
second series of the same study is needed, it is derived from a real one by
giving it a new SeriesInstanceUID (no real multi-series study is in the data).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from segnode.config.settings import Settings
from segnode.node.admin import rules as admin_rules
from segnode.node.admin import studies as admin_studies
from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import ConflictError, PermissionDeniedError
from segnode.node.completion.monitor import CompletionMonitor
from segnode.node.receiving.receiver import InstanceReceiver, Sender
from segnode.node.service import open_storage
from segnode.storage.models import (
    AuditEvent,
    Job,
    JobEvent,
    JobSeries,
    NodeEvent,
    Study,
    UserRole,
    utc_now,
)
from tests.helpers import require_shared_data


class Harness:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        _, self.sessions, self.store = open_storage(settings)
        self.receiver = InstanceReceiver(self.store, self.sessions, settings.storage)
        self.monitor = CompletionMonitor(settings.completion, settings.routing, self.sessions)

    def receive(self, data: bytes, called_ae: str = "SEGNODE") -> None:
        dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        outcome = self.receiver.receive(
            data,
            command_sop_class_uid=str(dataset.SOPClassUID),
            command_sop_instance_uid=str(dataset.SOPInstanceUID),
            sender=Sender(None, "PACS", called_ae),
        )
        assert outcome.status == 0, outcome

    def receive_folder(self, folder: str, limit: int = 5, called_ae: str = "SEGNODE") -> None:
        for path in sorted((require_shared_data() / folder).iterdir())[:limit]:
            self.receive(path.read_bytes(), called_ae)

    def tick_after(self, seconds: float):  # noqa: ANN201
        return self.monitor.tick(utc_now() + timedelta(seconds=seconds))

    def study(self) -> Study:
        with self.sessions() as session:
            return session.execute(select(Study)).scalar_one()

    def jobs(self) -> list[Job]:
        with self.sessions() as session:
            return list(session.execute(select(Job).order_by(Job.id)).scalars())


def as_new_series(path: Path, series_uid: str, description: str) -> bytes:
    """A real instance re-labelled as part of another series of the same study (synthetic)."""
    dataset = pydicom.dcmread(path)
    dataset.SeriesInstanceUID = series_uid
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(path)])
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.SeriesDescription = description
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def harness(make_settings: Callable[..., Settings], **sections: object) -> Harness:
    return Harness(make_settings(**sections))


def test_study_fires_after_quiet_time_with_the_reason_recorded(make_settings) -> None:
    h = harness(make_settings)
    h.receive_folder("siemens_prisma_E11_t1_fl2d_sag_HFS")
    assert h.tick_after(1) == []  # default profile: 30 s series / 60 s study quiet
    [outcome] = h.tick_after(61)
    assert outcome.new_state == "complete"
    study = h.study()
    assert study.state == "complete" and study.routing_rule == "brain-mr"
    assert "all 1 series quiet" in study.state_reason
    [job] = h.jobs()
    assert job.state == "received" and job.routing_rule == "brain-mr"
    with h.sessions() as session:
        assert len(session.execute(select(JobSeries).where(JobSeries.job_id == job.id)).all()) == 1
        created, selection = session.execute(select(JobEvent).order_by(JobEvent.id)).scalars()
        assert created.kind == "created" and "rules_evaluated" in created.detail
        assert selection.kind == "selection"
        [candidate] = selection.detail["candidates"]
        assert candidate["rejected"] == "only 5 images (< 10): not a volume"
        kinds = session.execute(select(NodeEvent.kind)).scalars().all()
    assert "study_complete" in kinds
    assert h.tick_after(120) == []  # fires once


def test_unrouted_study_is_kept_and_marked_ignored(make_settings) -> None:
    h = harness(make_settings)
    # Real Siemens Trio data: no BodyPartExamined, a research study description.
    h.receive_folder("siemens_trio_transfer_syntaxes", limit=2)
    [outcome] = h.tick_after(61)
    assert outcome.new_state == "ignored"
    assert "no rule matched" in h.study().state_reason
    assert h.jobs() == []


def test_push_ae_processes_unconditionally(make_settings) -> None:
    h = harness(make_settings)
    h.receive_folder("siemens_trio_transfer_syntaxes", limit=2, called_ae="SEGNODE_PUSH")
    [outcome] = h.tick_after(61)
    assert outcome.new_state == "complete"
    assert h.study().routing_rule == "radiologist-push"


def test_late_series_starts_a_new_job(make_settings) -> None:
    h = harness(make_settings)
    folder = require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS"
    h.receive_folder(folder.name)
    h.tick_after(61)
    late_uid = generate_uid()
    for path in sorted(folder.iterdir())[:3]:
        h.receive(as_new_series(path, late_uid, "t1_late"))
    assert h.study().state == "receiving"  # reopened, never dropped
    [outcome] = h.tick_after(61)
    first, second = h.jobs()
    assert outcome.job_id == second.id
    with h.sessions() as session:
        covered = session.execute(select(JobSeries).where(JobSeries.job_id == second.id)).all()
        created = session.execute(
            select(JobEvent).where(JobEvent.job_id == second.id, JobEvent.kind == "created")
        ).scalar_one()
        reopened = session.execute(select(NodeEvent).where(NodeEvent.kind == "study_reopened")).scalar_one()
    assert len(covered) == 2
    assert created.detail["previous_job_id"] == first.id
    assert reopened.detail["previous_state"] == "complete"


def test_late_series_attaches_to_a_job_that_has_not_started(make_settings) -> None:
    h = harness(make_settings, completion={"late_series": "attach"})
    folder = require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS"
    h.receive_folder(folder.name)
    h.tick_after(61)
    for path in sorted(folder.iterdir())[:2]:
        h.receive(as_new_series(path, "1.2.826.0.1.3680043.8.498.999", "t1_late"))
    h.tick_after(61)
    [job] = h.jobs()
    with h.sessions() as session:
        kinds = session.execute(select(JobEvent.kind).where(JobEvent.job_id == job.id)).scalars().all()
        covered = session.execute(select(JobSeries).where(JobSeries.job_id == job.id)).all()
    assert kinds == ["created", "selection", "series_attached"]
    assert len(covered) == 2


def test_required_series_and_discard_deadline(make_settings) -> None:
    profile = {"required_series": ["t1", "t1c", "t2", "flair"], "deadline_s": 300.0,
               "deadline_action": "discard"}
    h = harness(make_settings, completion={"profiles": {"default": profile}})
    # t1_fl2d_sag: only a T1, and a volume (selection.min_images) once 10 of its images are in.
    h.receive_folder("siemens_prisma_E11_t1_fl2d_sag_HFS", limit=10)
    assert h.tick_after(100) == []
    [outcome] = h.tick_after(301)
    assert outcome.new_state == "discarded"
    assert "missing required series ['t1c', 't2', 'flair']" in h.study().state_reason
    assert h.jobs() == []


def test_wait_deadline_logs_once_and_keeps_waiting(make_settings) -> None:
    profile = {"required_series": ["flair"], "deadline_s": 10.0, "deadline_action": "wait"}
    h = harness(make_settings, completion={"profiles": {"default": profile}})
    h.receive_folder("siemens_prisma_E11_t1_fl2d_sag_HFS", limit=2)
    assert h.tick_after(100) == [] and h.tick_after(200) == []
    assert h.study().state == "receiving" and h.study().deadline_passed_at is not None
    with h.sessions() as session:
        assert session.execute(select(NodeEvent.kind)).scalars().all().count("deadline_passed") == 1


def test_completion_resumes_from_the_database_after_a_restart(make_settings) -> None:
    settings = make_settings()
    first = Harness(settings)
    first.receive_folder("siemens_prisma_E11_t1_fl2d_sag_HFS", limit=3)
    del first  # the process "dies": nothing in memory survives
    second = Harness(settings)
    [outcome] = second.tick_after(61)
    assert outcome.new_state == "complete"


def test_job_records_the_sequence_identification(make_settings, tcga_study) -> None:  # noqa: ANN001
    """The four real TCGA sequences, received as DICOM: the job names each role's series
    and why every series was chosen."""
    h = harness(make_settings)
    for built in tcga_study.values():
        for path in built.files:
            h.receive(path.read_bytes())
    [outcome] = h.tick_after(61)
    with h.sessions() as session:
        selection = session.execute(
            select(JobEvent).where(JobEvent.job_id == outcome.job_id, JobEvent.kind == "selection")
        ).scalar_one()
    chosen = {role: entry["series_instance_uid"] for role, entry in selection.detail["roles"].items()}
    assert chosen == {role: built.series_instance_uid for role, built in tcga_study.items()}
    assert selection.detail["missing"] == []
    assert all(candidate["reasons"] for candidate in selection.detail["candidates"])


def test_an_operator_completes_a_waiting_study_and_the_monitor_fires_it_once(make_settings) -> None:
    """Force-complete (dashboard, API): the request is stored; the next tick fires the study
    with the reason naming who asked, routing still applied; the request is used up."""
    h = harness(make_settings)
    h.receive_folder("siemens_prisma_E11_t1_fl2d_sag_HFS")
    assert h.tick_after(1) == []  # quiet times not over: it waits
    operator = Actor("olivia", UserRole.OPERATOR, "127.0.0.1")
    admin_studies.force_complete(h.sessions, operator, h.study().id)
    [outcome] = h.tick_after(1)
    assert outcome.new_state == "complete"
    study = h.study()
    assert study.state == "complete" and study.routing_rule == "brain-mr"
    assert study.state_reason.startswith("completed by hand by olivia")
    assert study.force_complete_by is None
    [job] = h.jobs()
    assert job.trigger.startswith("completed by hand by olivia")
    with h.sessions() as session:
        audit = session.execute(select(AuditEvent)).scalar_one()
        kinds = session.execute(select(NodeEvent.kind)).scalars().all()
    assert (audit.actor, audit.action, audit.target, audit.client) == (
        "olivia", "study.force_complete", f"study {study.id}", "127.0.0.1",
    )
    assert "force_complete_requested" in kinds
    with pytest.raises(ConflictError, match="only a receiving study"):
        admin_studies.force_complete(h.sessions, operator, study.id)
    assert h.tick_after(120) == []


def test_a_disabled_rule_is_skipped_from_the_next_tick_and_enabled_again(make_settings) -> None:
    h = harness(make_settings)
    admin = Actor("ada", UserRole.ADMIN)
    admin_rules.disable_rule(h.settings, h.sessions, admin, "brain-mr", "misfiring on fMRI")
    with pytest.raises(PermissionDeniedError):
        admin_rules.enable_rule(h.settings, h.sessions, Actor("otto", UserRole.OPERATOR), "brain-mr")
    h.receive_folder("siemens_prisma_E11_t1_fl2d_sag_HFS")
    [outcome] = h.tick_after(61)
    assert outcome.new_state == "ignored" and h.jobs() == []  # brain-mr skipped: no rule matched
    admin_rules.enable_rule(h.settings, h.sessions, admin, "brain-mr")
    with h.sessions() as session:
        actions = session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars().all()
    assert actions == ["rule.disable", "rule.enable"]
