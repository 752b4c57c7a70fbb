"""Who may hold a connection to the listener: the admission policy against hostile peers.

Why this exists: pynetdicom 3.0.4 trusts the peer at the transport level —
every connection counts against ``maximum_associations`` before any AE title is
looked at, and a half-sent PDU blocks its reader forever — so ten idle sockets
locked out every legitimate sender. :class:`ConnectionGuard` books every open
connection by peer address and state. It caps connections per address and
connections still *pending* (not yet accepted as an association); when the
pending cap is full, a newcomer evicts the oldest pending connection of the
address holding the most, so a flood from one address cannot crowd out
another. A sweeper closes pending connections older than
``association_request_timeout_s``. The pynetdicom side (sockets, handler,
server) that enforces it is :mod:`segnode.node.receiving.guarded_transport`.

Logs name only addresses, ports, counts and reasons; refusals are rate-limited
per address so a flood cannot flood the log.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from segnode.config.settings import ListenerSettings

log = logging.getLogger(__name__)

#: Tolerance over the negotiated maximum for a P-DATA-TF PDU: some senders count
#: the PDV item headers in the maximum and some do not.
PDATA_HEADER_SLACK_BYTES = 1024
#: One refusal or drop log line (and node event) per address and reason per window.
LOG_WINDOW_S = 10.0

EventRecorder = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """The guard's limits, in bytes and seconds (from :class:`ListenerSettings`)."""

    max_connections_per_address: int
    max_pending_connections: int
    association_request_timeout_s: float
    pdu_read_timeout_s: float
    max_pdata_pdu_bytes: int
    max_instance_bytes: int

    @classmethod
    def from_listener(cls, listener: ListenerSettings) -> GuardLimits:
        instance_bytes = listener.max_instance_mb * 1024 * 1024
        # max_pdu_bytes 0 means "unlimited" in DICOM; one PDU still cannot
        # legitimately be larger than the largest instance we accept.
        pdata = listener.max_pdu_bytes or instance_bytes
        return cls(
            max_connections_per_address=listener.max_connections_per_address,
            max_pending_connections=listener.max_pending_connections,
            association_request_timeout_s=listener.association_request_timeout_s,
            pdu_read_timeout_s=listener.pdu_read_timeout_s,
            max_pdata_pdu_bytes=pdata + PDATA_HEADER_SLACK_BYTES,
            max_instance_bytes=instance_bytes,
        )


def pynetdicom_association_limit(listener: ListenerSettings) -> int:
    """The value for ``AE.maximum_associations``, high enough never to pre-empt ours.

    pynetdicom counts every live acceptor thread, pending ones included; ours
    counts accepted associations only. The guard bounds pending connections, and
    evicted or swept ones may still be winding down for a few milliseconds, hence
    twice the pending cap.
    """
    return listener.max_associations + 2 * listener.max_pending_connections + 1


class ConnectionState(StrEnum):
    PENDING = "pending"
    """Connected, no association accepted yet: subject to the request deadline."""
    ASSOCIATED = "associated"
    """Holds (or is being granted) one of the ``max_associations`` slots."""
    CLOSED = "closed"
    """Dropped by the guard or finished; no longer counted, thread winding down."""


@dataclass(eq=False)
class GuardedConnection:
    """One accepted TCP connection, from admission until its thread ends."""

    sock: socket.socket
    address: str
    port: int
    connected_at: float
    """``time.monotonic()`` at accept."""
    deadline: float
    """When a still-pending connection is closed (association_request_timeout_s)."""
    state: ConnectionState = ConnectionState.PENDING
    requested: bool = False
    """pynetdicom handed the A-ASSOCIATE-RQ to the association thread."""
    handshaking: bool = False
    """In its TLS handshake, which enforces the deadline itself (and reports a failure)."""

    def shut(self) -> None:
        """Wake every thread blocked on this socket and end the TCP connection.

        ``shutdown`` rather than ``close``: a ``recv`` blocked in another thread
        returns at once (``close`` alone would leave it blocked); the owning
        thread closes the descriptor. The base-class call bypasses
        ``SSLSocket.shutdown``, which would discard the TLS object under a
        reader's feet.
        """
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the peer or by pynetdicom


class _RateLimiter:
    """Allows one report per key per window and counts the suppressed ones."""

    def __init__(self, window_s: float, max_keys: int = 4096) -> None:
        self._window_s = window_s
        self._max_keys = max_keys
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, address: str, reason: str) -> int | None:
        """The number suppressed since the last report, or None to stay quiet."""
        now = time.monotonic()
        key = (address, reason)
        with self._lock:
            last, suppressed = self._last.get(key, (-self._window_s, 0))
            if now - last < self._window_s:
                self._last[key] = (last, suppressed + 1)
                return None
            if len(self._last) >= self._max_keys:  # many addresses: forget, stay bounded
                self._last.clear()
            self._last[key] = (now, 0)
            return suppressed


class ConnectionGuard:
    """Admission, per-address and pending caps, deadlines and bookkeeping."""

    def __init__(self, limits: GuardLimits, record_event: EventRecorder | None = None) -> None:
        self.limits = limits
        self._record_event = record_event
        self._connections: dict[socket.socket, GuardedConnection] = {}
        self._changed = threading.Condition()
        self._reports = _RateLimiter(LOG_WINDOW_S)

    def admit(self, sock: socket.socket, address: str, port: int) -> GuardedConnection | None:
        """Book a new connection, or None when it must be refused (and closed)."""
        now = time.monotonic()
        victim: GuardedConnection | None = None
        with self._changed:
            live = [c for c in self._connections.values() if c.state is not ConnectionState.CLOSED]
            if sum(1 for c in live if c.address == address) >= self.limits.max_connections_per_address:
                refusal = "per-address connection limit"
            else:
                refusal = ""
                pending = [c for c in live if c.state is ConnectionState.PENDING]
                if len(pending) >= self.limits.max_pending_connections:
                    victim = _eviction_victim(pending, address)
                    if victim is None:
                        refusal = "pending connection limit"
                    else:
                        victim.state = ConnectionState.CLOSED
            if refusal:
                connection = None
            else:
                connection = GuardedConnection(
                    sock, address, port, now, now + self.limits.association_request_timeout_s
                )
                self._connections[sock] = connection
        if victim is not None:
            victim.shut()
            self.report(victim, "evicted: pending connection limit")
        if connection is None:
            self._report_address(address, f"refused: {refusal}")
        return connection

    def connection_for(self, sock: socket.socket) -> GuardedConnection | None:
        """The live booking of ``sock``; None once the guard closed it."""
        with self._changed:
            connection = self._connections.get(sock)
        if connection is None or connection.state is ConnectionState.CLOSED:
            return None
        return connection

    def reserve_association(self, connection: GuardedConnection, max_associations: int) -> bool:
        """Take one of ``max_associations`` slots for ``connection``; False when all are taken.

        Atomic, so two requests arriving together cannot both take the last slot.
        """
        with self._changed:
            if connection.state is not ConnectionState.PENDING:
                return connection.state is ConnectionState.ASSOCIATED
            held = sum(
                1 for c in self._connections.values() if c.state is ConnectionState.ASSOCIATED
            )
            if held >= max_associations:
                return False
            connection.state = ConnectionState.ASSOCIATED
            return True

    def drop(self, connection: GuardedConnection, reason: str) -> None:
        """Close ``connection`` now (it stops counting at once) and report why."""
        with self._changed:
            already = connection.state is ConnectionState.CLOSED
            connection.state = ConnectionState.CLOSED
        connection.shut()
        if not already:
            self.report(connection, reason)

    def release(self, connection: GuardedConnection) -> None:
        """Forget ``connection``: its thread has finished."""
        with self._changed:
            connection.state = ConnectionState.CLOSED
            self._connections.pop(connection.sock, None)
            self._changed.notify_all()

    def sweep(self) -> int:
        """Close pending connections past their association deadline; how many."""
        now = time.monotonic()
        with self._changed:
            expired = [
                c
                for c in self._connections.values()
                if c.state is ConnectionState.PENDING and c.deadline <= now and not c.handshaking
            ]
        for connection in expired:
            self.drop(connection, "association request timeout")
        return len(expired)

    def close_all(self) -> None:
        with self._changed:
            everything = list(self._connections.values())
            for connection in everything:
                connection.state = ConnectionState.CLOSED
        for connection in everything:
            connection.shut()

    def wait_closed(self, timeout_s: float) -> bool:
        """Wait until every connection's thread has finished; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._connections, timeout_s)

    def counts(self) -> dict[ConnectionState, int]:
        """Connections by state (CLOSED: dropped, thread still winding down)."""
        with self._changed:
            states = [c.state for c in self._connections.values()]
        return {state: states.count(state) for state in ConnectionState}

    def report(self, connection: GuardedConnection, reason: str, *, event: str = "") -> None:
        """Log (and optionally record) a guard decision, rate-limited per address."""
        self._report_address(connection.address, reason, port=connection.port, event=event)

    def _report_address(self, address: str, reason: str, *, port: int = 0, event: str = "") -> None:
        suppressed = self._reports.allow(address, reason)
        if suppressed is None:
            return
        detail = {"reason": reason, "address": address, "port": port, "suppressed": suppressed}
        log.warning(
            "connection %s",
            reason,
            extra={"peer_address": address, "peer_port": port, "suppressed": suppressed},
        )
        if event and self._record_event is not None:
            self._record_event(event, detail)


def _eviction_victim(pending: list[GuardedConnection], newcomer: str) -> GuardedConnection | None:
    """The oldest pending connection of the address with the most, unless that is the newcomer's.

    Evicting from the heaviest other address keeps a flood from one address
    from pushing out a lone legitimate sender; a newcomer whose own address
    already holds at least as many pending connections is refused instead.
    """
    by_address: dict[str, list[GuardedConnection]] = {}
    for connection in pending:
        by_address.setdefault(connection.address, []).append(connection)
    own = len(by_address.get(newcomer, []))
    others = [group for address, group in by_address.items() if address != newcomer]
    if not others:
        return None
    heaviest = max(others, key=lambda group: (len(group), -min(c.connected_at for c in group)))
    if len(heaviest) <= own:
        return None
    return min(heaviest, key=lambda c: c.connected_at)
