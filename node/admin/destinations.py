"""Destinations: what is configured, how deliveries to each went, and a C-ECHO test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from segnode.config.destinations import DimseDestination
from segnode.config.settings import Settings
from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import ConflictError, InvalidInputError, NotFoundError
from segnode.node.delivery.dimse.scu import echo_dimse
from segnode.node.delivery.outcome import DeliveryError
from segnode.storage.audit import record_audit
from segnode.storage.database import read_only_session
from segnode.storage.models import Suspension, UserRole
from segnode.storage.queries import DestinationDeliveries, deliveries_by_destination
from segnode.storage.suspensions import resume, suspend, suspended


@dataclass(frozen=True)
class DestinationView:
    name: str
    protocol: str
    address: str
    send: list[str]
    deliveries: DestinationDeliveries | None
    paused_by: str | None = None
    """Who paused deliveries to it (None: it is delivered to)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "address": self.address,
            "send": self.send,
            "deliveries": self.deliveries.to_json() if self.deliveries else None,
            "paused_by": self.paused_by,
        }


@dataclass(frozen=True, slots=True)
class EchoResult:
    destination: str
    ok: bool
    detail: str
    round_trip_ms: float | None


def destinations(settings: Settings, sessions: sessionmaker[Session]) -> list[DestinationView]:
    with read_only_session(sessions) as session:
        summary = deliveries_by_destination(session)
        paused = suspended(session, "destination")
    views = []
    for destination in settings.delivery.destinations:
        if isinstance(destination, DimseDestination):
            address = f"{destination.ae_title}@{destination.host}:{destination.port}"
            address += " (TLS)" if destination.tls.enabled else ""
        else:
            address = destination.url
        views.append(
            DestinationView(
                destination.name,
                destination.protocol,
                address,
                [str(kind) for kind in destination.send],
                summary.get(destination.name),
                paused[destination.name].by if destination.name in paused else None,
            )
        )
    return views


def echo(settings: Settings, sessions: sessionmaker[Session], actor: Actor, name: str) -> EchoResult:
    """C-ECHO a DIMSE destination as a delivery would reach it; recorded in the audit log."""
    actor.require(UserRole.OPERATOR, "testing a destination")
    destination = next((d for d in settings.delivery.destinations if d.name == name), None)
    if destination is None:
        raise NotFoundError(f"no destination {name!r}")
    if not isinstance(destination, DimseDestination):
        raise InvalidInputError(f"destination {name!r} is {destination.protocol}: C-ECHO is DIMSE only")
    try:
        seconds = echo_dimse(destination)
        result = EchoResult(name, True, "C-ECHO success", round(seconds * 1000, 1))
    except DeliveryError as exc:
        result = EchoResult(name, False, str(exc), None)
    with sessions.begin() as session:
        record_audit(
            session, actor.name, "destination.echo", name, ok=result.ok, client=actor.client,
            detail={"detail": result.detail},
        )
    return result


def suspended_destinations(sessions: sessionmaker[Session]) -> dict[str, Suspension]:
    with read_only_session(sessions) as session:
        return suspended(session, "destination")


def pause(
    settings: Settings, sessions: sessionmaker[Session], actor: Actor, name: str, reason: str | None = None
) -> None:
    """Hold deliveries to ``name`` (a PACS in maintenance): jobs wait in ``sending``, nothing fails."""
    actor.require(UserRole.OPERATOR, "pausing a destination")
    _require_destination(settings, name)
    with sessions.begin() as session:
        if not suspend(session, "destination", name, actor.name, reason):
            raise ConflictError(f"destination {name!r} is already paused")
        record_audit(session, actor.name, "destination.pause", name, client=actor.client, detail={"reason": reason})


def resume_destination(settings: Settings, sessions: sessionmaker[Session], actor: Actor, name: str) -> None:
    """Deliver to ``name`` again; held jobs send within seconds."""
    actor.require(UserRole.OPERATOR, "resuming a destination")
    _require_destination(settings, name)
    with sessions.begin() as session:
        if not resume(session, "destination", name):
            raise ConflictError(f"destination {name!r} is not paused")
        record_audit(session, actor.name, "destination.resume", name, client=actor.client)


def _require_destination(settings: Settings, name: str) -> None:
    if not any(d.name == name for d in settings.delivery.destinations):
        raise NotFoundError(f"no destination {name!r}")
