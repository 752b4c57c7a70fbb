"""``segnode studies``: every study with its completion state and reason, and the quarantine count."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from segnode.node.cli import app
from segnode.storage.database import create_db_engine, make_session_factory
from segnode.storage.instances import record_instance
from segnode.storage.quarantine import record_quarantine
from tests.storage.records import instance_record


def test_studies_lists_each_study_and_counts_the_quarantine(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)]).exit_code == 0
    sessions = make_session_factory(create_db_engine(f"sqlite:///{tmp_path / 'segnode.db'}"))
    with sessions.begin() as session:
        for sop, series in (("1.2.3.1.1", "1.2.3.1"), ("1.2.3.1.2", "1.2.3.1"), ("1.2.3.2.1", "1.2.3.2")):
            record_instance(session, instance_record(sop, series))
        record_quarantine(
            session,
            reason="truncated",
            status_code=0xC210,
            file_path=None,
            sop_instance_uid=None,
            sop_class_uid=None,
            calling_ae="PACS",
            association_id=None,
        )

    result = runner.invoke(app, ["studies", "--json", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["quarantined"] == 1
    [study] = listed["studies"]
    assert {key: study[key] for key in ("study_instance_uid", "state", "series", "instances", "reason")} == {
        "study_instance_uid": "1.2.3",
        "state": "receiving",
        "series": 2,
        "instances": 3,
        "reason": "first instance received",
    }
    assert set(study) == {"id", "study_instance_uid", "state", "series", "instances", "last_received_at", "reason"}

    text = runner.invoke(app, ["studies", "--data-dir", str(tmp_path)]).output
    assert "receiving" in text and "2 series" in text and "3 instances" in text and "1.2.3" in text
    assert "1 instance(s) in quarantine" in text
