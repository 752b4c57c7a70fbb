"""What one delivery attempt yields: a receipt, or an error that says whether to retry.

The split between :class:`TransientDeliveryError` and
:class:`PermanentDeliveryError` is the whole contract with the job runner: a
transient failure (the PACS is down, busy, out of disk, dropped the
connection) is retried with backoff; a permanent one (the PACS does not know
our AE title, refuses the SOP class, rejects the instance, answers HTTP 4xx)
fails the job at once, because sending the same bytes again cannot succeed
until someone changes a configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segnode.node.errors import NodeError


class DeliveryError(NodeError):
    """A delivery attempt failed; the message names the destination and the cause.

    Attributes:
        destination: the configured destination's ``name``.
        cause: a short machine-readable code for the job's event log, e.g.
            ``connection-failed``, ``association-rejected``, ``association-aborted``,
            ``no-presentation-context``, ``store-status``, ``http-status``.
        delivered: SOP Instance UIDs the peer had already acknowledged in this
            attempt before it failed (a retry sends them again; PACSs accept an
            identical re-send).
    """

    def __init__(
        self, destination: str, message: str, *, cause: str, delivered: tuple[str, ...] = ()
    ) -> None:
        super().__init__(f"delivery to {destination!r} failed: {message}")
        self.destination = destination
        self.cause = cause
        self.delivered = delivered


class TransientDeliveryError(DeliveryError):
    """Worth retrying later: the peer was unreachable, busy, out of resources or dropped us."""


class PermanentDeliveryError(DeliveryError):
    """Never retried: the peer refused us or the data; a configuration must change first."""


@dataclass(frozen=True)
class DeliveryReceipt:
    """Every file of one attempt was acknowledged by the destination.

    Attributes:
        destination: the configured destination's ``name``.
        sop_instance_uids: the delivered instances, in the order sent.
        statuses: SOP Instance UID -> the peer's status as a C-STORE status code:
            0x0000 Success or a Warning (0xB000, 0xB006, 0xB007, ...); for STOW-RS
            0x0000 or the instance's WarningReason (0008,1196).
        duration_s: wall-clock time of the attempt, connection set-up included.
        detail: human-readable notes, one per instance the peer accepted with a
            warning (e.g. "0xB000 Coercion of Data Elements"); empty when clean.
    """

    destination: str
    sop_instance_uids: tuple[str, ...]
    statuses: dict[str, int]
    duration_s: float
    detail: tuple[str, ...] = field(default=())
