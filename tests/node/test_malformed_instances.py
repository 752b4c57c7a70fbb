"""Every malformed variant of issue 10 is refused before Success, quarantined, and recorded.

The variants are built from REAL scanner files (tests/fixtures/malformed.py says how);
real files of all little-endian transfer syntaxes, one deflated, are the controls
that must still be stored. Their patient attributes are canaries: no log record at
any level may carry them.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from segnode.node.receiving.receiver import InstanceReceiver, Sender, StoreOutcome
from segnode.storage.models import Instance, NodeEvent, QuarantinedInstance, Series
from tests.fixtures.malformed import CANARY_STRINGS, Variant, variants
from tests.helpers import require_shared_data

SENDER = Sender(association_id=None, calling_ae="MODALITY", called_ae="SEGNODE")


def _send(receiver: InstanceReceiver, case: Variant) -> StoreOutcome:
    """The variant as the listener hands it over: its own command UIDs and context."""
    return receiver.receive(
        case.data,
        command_sop_class_uid=case.command_sop_class_uid,
        command_sop_instance_uid=case.command_sop_instance_uid,
        context_sop_class_uid=case.context_sop_class_uid,
        sender=SENDER,
    )


def test_every_malformed_variant_is_refused_quarantined_and_recorded(
    receiver_for, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver, sessions, store = receiver_for(max_dataset_bytes=16 << 20)
    problems: list[str] = []
    cases = variants(require_shared_data().parent)
    assert len(cases) >= 40
    for case in cases:
        with sessions() as session:
            quarantined_before = len(session.execute(select(QuarantinedInstance.id)).all())
        outcome = _send(receiver, case)
        with sessions() as session:
            rows = session.execute(
                select(QuarantinedInstance).order_by(QuarantinedInstance.id)
            ).scalars().all()[quarantined_before:]
            stored = session.execute(
                select(Instance).where(Instance.sop_instance_uid == case.command_sop_instance_uid)
            ).scalar_one_or_none()
            if not case.refused_with:
                if outcome.status != 0 or stored is None:
                    problems.append(f"{case.name}: not stored (0x{outcome.status:04X} {outcome.reason})")
                elif stored.sha256 and store.absolute(stored.file_path).read_bytes() != case.data:
                    problems.append(f"{case.name}: stored bytes differ")
                session.delete(stored) if stored is not None else None
                session.commit()
                continue
            if outcome.status not in case.refused_with:
                problems.append(f"{case.name}: status 0x{outcome.status:04X} ({outcome.reason})")
                continue
            if len(rows) != 1:
                problems.append(f"{case.name}: {len(rows)} quarantine rows")
                continue
            row = rows[0]
            if case.reason_contains not in row.reason or row.status_code != outcome.status:
                problems.append(f"{case.name}: row {row.status_code:#06x} {row.reason!r}")
            if row.file_path is None or (store.quarantine_root / row.file_path).read_bytes() != case.data:
                problems.append(f"{case.name}: quarantine copy missing or different")
            event = session.execute(
                select(NodeEvent).where(NodeEvent.kind == "instance_quarantined")
                .order_by(NodeEvent.id.desc())
            ).scalars().first()
            if event is None or event.detail["quarantine_id"] != row.id:
                problems.append(f"{case.name}: no instance_quarantined event")
            if stored is not None and stored.sha256 == "":
                problems.append(f"{case.name}: an instance row was written")
    assert not problems, "\n".join(problems)

    logged = "\n".join(
        f"{record.getMessage()} {record.__dict__}" for record in caplog.records
    )
    for canary in CANARY_STRINGS:
        assert canary not in logged, f"{canary} reached the logs"


def test_undecodable_series_number_is_stored_as_absent(receiver_for) -> None:
    receiver, sessions, _ = receiver_for()
    by_name = {case.name: case for case in variants(require_shared_data().parent)}
    case = by_name["series_number_abc"]
    outcome = _send(receiver, case)
    assert outcome.status == 0
    with sessions() as session:
        assert session.execute(select(Series.series_number)).scalar_one() is None
