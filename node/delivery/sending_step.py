"""The ``sending`` step: a job's results to every configured destination, tracked per destination.

Why per destination: one PACS being down must delay only its own copy, and a destination
that acknowledged the results must never get them again (not after a restart, not after
another destination's retry). Each destination's row in ``job_deliveries`` is committed as
soon as its attempt ends, so a crash repeats at most the one attempt that was in flight;
the objects keep their SOP Instance UIDs, so a PACS sees such a repeat as the same object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from segnode.config.destinations import DeliverySettings, Destination
from segnode.node.backoff import backoff_delay_s
from segnode.node.delivery.dispatch import (
    PermanentDeliveryError,
    TransientDeliveryError,
    send_files,
)
from segnode.node.logs import log_context
from segnode.pipeline.workspace import Results, Workspace
from segnode.storage.job_states import JobState
from segnode.storage.jobs import append_job_event, ensure_deliveries
from segnode.storage.models import DeliveryState, JobDelivery, utc_now
from segnode.storage.suspensions import suspended

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendingOutcome:
    """Where the job stands after one pass over its destinations."""

    pending_until: datetime | None
    """Some destination waits for a retry until this time (None: nothing pending)."""
    failures: dict[str, str]
    """Destination name -> why it failed for good."""
    delivered: list[str]


def files_for(results: Results, destination: Destination) -> list[Path]:
    """The written objects of the kinds this destination receives."""
    return [obj.path for obj in results.of_kinds(set(destination.send))]


def _attempt(
    session: Session,
    row: JobDelivery,
    destination: Destination,
    files: list[Path],
    settings: DeliverySettings,
    now: datetime,
) -> None:
    row.attempts += 1
    try:
        if not files:
            raise PermanentDeliveryError(
                destination.name,
                f"none of the kinds it receives ({', '.join(destination.send)}) was written for "
                "this job (the destination was probably added after the writing step); "
                "`segnode jobs retry ID --from writing` writes them",
                cause="nothing-to-send",
            )
        receipt = send_files(destination, files)
        uids = list(receipt.sop_instance_uids)
        duration = receipt.duration_s
    except PermanentDeliveryError as exc:
        row.state, row.last_error, row.next_attempt_at = DeliveryState.FAILED.value, str(exc), None
        append_job_event(
            session, row.job_id, "delivery_failed", {"destination": destination.name, "error": str(exc)}
        )
        log.warning("delivery refused", extra={"job_id": row.job_id, "destination": destination.name})
        return
    except TransientDeliveryError as exc:
        row.last_error = str(exc)
        if row.attempts >= settings.max_attempts:
            row.state, row.next_attempt_at = DeliveryState.FAILED.value, None
            row.last_error = f"gave up after {row.attempts} attempts: {exc}"
            append_job_event(
                session,
                row.job_id,
                "delivery_failed",
                {"destination": destination.name, "error": row.last_error},
            )
            return
        delay = backoff_delay_s(row.attempts, settings.initial_backoff_s, settings.max_backoff_s)
        row.next_attempt_at = now + timedelta(seconds=delay)
        append_job_event(
            session,
            row.job_id,
            "delivery_retry",
            {
                "destination": destination.name,
                "error": str(exc),
                "attempt": row.attempts,
                "retry_at": row.next_attempt_at.isoformat(),
            },
        )
        log.info("delivery postponed", extra={"job_id": row.job_id, "destination": destination.name})
        return
    row.state, row.delivered_at, row.next_attempt_at = DeliveryState.DELIVERED.value, utc_now(), None
    row.sop_instance_uids, row.last_error = uids, None
    append_job_event(
        session,
        row.job_id,
        "delivered",
        {"destination": destination.name, "instances": len(uids), "attempt": row.attempts},
        duration_s=duration,
    )


PAUSED_RECHECK_S = 5.0
"""How often a job waiting on a suspended destination looks whether it was resumed."""


def send_results(
    sessions: sessionmaker[Session],
    job_id: int,
    workspace: Workspace,
    settings: DeliverySettings,
) -> SendingOutcome:
    """Try every destination that is due; commit each destination's outcome on its own.

    Every line logged meanwhile (this module's, the DIMSE and STOW clients') carries the
    job id and ``step="sending"``, like the lines of the job's pipeline steps.
    """
    with log_context(job_id=job_id, step=JobState.SENDING.value):
        return _send_due(sessions, job_id, workspace, settings)


def _send_due(
    sessions: sessionmaker[Session],
    job_id: int,
    workspace: Workspace,
    settings: DeliverySettings,
) -> SendingOutcome:
    destinations = {destination.name: destination for destination in settings.destinations}
    with sessions.begin() as session:
        rows = ensure_deliveries(session, job_id, destinations)
        paused = set(suspended(session, "destination"))
        due = [
            row.id
            for row in rows
            if row.state == DeliveryState.PENDING
            and row.destination not in paused  # held, not failed, until it is resumed
            and (row.next_attempt_at is None or row.next_attempt_at <= utc_now())
        ]
    results: Results | None = None
    for row_id in due:
        with sessions.begin() as session:
            row = session.get(JobDelivery, row_id)
            if row is None or row.state != DeliveryState.PENDING:
                continue
            destination = destinations[row.destination]
            if results is None:  # read once, and only when something is due
                results = workspace.read_results()
            _attempt(session, row, destination, files_for(results, destination), settings, utc_now())
    with sessions.begin() as session:
        rows = ensure_deliveries(session, job_id, destinations)
        recheck = utc_now() + timedelta(seconds=PAUSED_RECHECK_S)
        pending = [
            recheck if row.destination in paused else row.next_attempt_at or utc_now()
            for row in rows
            if row.state == DeliveryState.PENDING
        ]
        return SendingOutcome(
            pending_until=min(pending) if pending else None,
            failures={
                row.destination: row.last_error or "failed"
                for row in rows
                if row.state == DeliveryState.FAILED
            },
            delivered=[row.destination for row in rows if row.state == DeliveryState.DELIVERED],
        )
