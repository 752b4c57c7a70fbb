"""Association rows: opened by the listener, ended once (by its close handler or at start/stop)."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from segnode.storage.associations import (
    close_association,
    end_open_associations,
    record_association_opened,
)
from segnode.storage.database import create_db_engine, make_session_factory, upgrade_to_head
from segnode.storage.instances import record_instances
from segnode.storage.models import Association, AssociationOutcome
from tests.storage.records import instance_record


def _sessions(database_url: str) -> sessionmaker[Session]:
    engine = create_db_engine(database_url)
    upgrade_to_head(engine)
    return make_session_factory(engine)


def _open(session: Session, association_id: str) -> None:
    record_association_opened(
        session,
        association_id,
        calling_ae="PACS",
        called_ae="SEGNODE",
        peer_address="127.0.0.1",
        peer_port=104,
    )


def _rows(sessions: sessionmaker[Session]) -> dict[str, tuple[str, int]]:
    with sessions() as session:
        return {
            row.id: (row.outcome, row.instances_stored)
            for row in session.execute(
                select(Association.id, Association.outcome, Association.instances_stored)
            )
        }


def test_end_open_associations_ends_only_open_rows(database_url: str) -> None:
    sessions = _sessions(database_url)
    with sessions.begin() as session:
        for association_id in ("open-1", "open-2"):
            _open(session, association_id)
    with sessions.begin() as session:
        record_instances(session, [replace(instance_record("1.2.3.4.0"), association_id="open-1")])
        close_association(session, "open-2", AssociationOutcome.RELEASED, stored=0, failed=0)
    with sessions.begin() as session:
        assert end_open_associations(session) == 1
    with sessions.begin() as session:
        assert end_open_associations(session) == 0
    # The listener's count died with it: the instance rows give the stored count.
    assert _rows(sessions) == {"open-1": ("interrupted", 1), "open-2": ("released", 0)}


def test_a_late_close_handler_does_not_rewrite_an_ended_row(database_url: str) -> None:
    """The node ended the row at stop; the listener's handler, running late, changes nothing."""
    sessions = _sessions(database_url)
    with sessions.begin() as session:
        _open(session, "cut-off")
    with sessions.begin() as session:
        end_open_associations(session)
    with sessions.begin() as session:
        close_association(session, "cut-off", AssociationOutcome.RELEASED, stored=5, failed=0)
    assert _rows(sessions) == {"cut-off": ("interrupted", 0)}
