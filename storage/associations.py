"""Association rows: one per incoming association, opened, then ended with its outcome.

Why rows at all: the completion rule's release hint needs to know whether a study's
associations are still open and when the last one closed (``segnode.storage.studies``),
and a row per association lets an operator see who sent what. A row is ended exactly once:
by the listener's close handler, or, for an association the node cut off or a previous
process left open, by :func:`end_open_associations`.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from segnode.storage.database import rowcount
from segnode.storage.models import Association, AssociationOutcome, Instance, utc_now


def record_association_opened(
    session: Session,
    association_id: str,
    *,
    calling_ae: str,
    called_ae: str,
    peer_address: str,
    peer_port: int,
    listener: str | None = None,
) -> None:
    """Add the row of an association the listener just accepted (outcome ``open``).

    ``listener``: which listener process took it (``host:pid``), where several share a port
    or several nodes share the database.
    """
    session.add(
        Association(
            id=association_id,
            listener=listener,
            calling_ae=calling_ae,
            called_ae=called_ae,
            peer_address=peer_address,
            peer_port=peer_port,
            started_at=utc_now(),
            outcome=AssociationOutcome.OPEN,
            instances_stored=0,
            instances_failed=0,
        )
    )


def close_association(
    session: Session, association_id: str, outcome: AssociationOutcome, stored: int, failed: int
) -> None:
    """End the row with the listener's counts; a row already ended is left as it is."""
    session.execute(
        update(Association)
        .where(Association.id == association_id, Association.ended_at.is_(None))
        .values(
            ended_at=utc_now(), outcome=outcome, instances_stored=stored, instances_failed=failed
        )
    )


def end_open_associations(
    session: Session, outcome: AssociationOutcome = AssociationOutcome.INTERRUPTED
) -> int:
    """End every association row still ``open``; return how many.

    At start-up, the open rows belonged to a previous process that died; at a clean stop,
    after the listener has stopped, they are the associations the node cut off. Either way
    the listener's own count is lost, so ``instances_stored`` is taken from the instance rows.
    """
    stored = (
        select(func.count(Instance.id))
        .where(Instance.association_id == Association.id)
        .scalar_subquery()
    )
    return rowcount(
        session.execute(
            update(Association)
            .where(Association.ended_at.is_(None))
            .values(ended_at=utc_now(), outcome=outcome, instances_stored=stored)
            .execution_options(synchronize_session=False)
        )
    )
