"""Delivery: the sending step, one attempt to one destination, and the DIMSE and DICOMweb clients.

``sending_step`` is the job's last step (which destinations still need the results, retries);
``dispatch`` makes one attempt to one destination by its protocol; ``dimse/`` and ``stow`` are
the clients; ``outcome`` holds the receipt and the transient/permanent errors.
"""

from __future__ import annotations

from segnode.config.settings import Settings
from segnode.vocabulary import OutputKind

#: What the node writes when no destination asks for anything (``segnode run`` and tests).
DEFAULT_OUTPUT_KINDS: tuple[OutputKind, ...] = ("seg", "sr")


def wanted_output_kinds(settings: Settings) -> tuple[OutputKind, ...]:
    """The result kinds the write step must produce: every kind some destination sends."""
    wanted = {kind for destination in settings.delivery.destinations for kind in destination.send}
    return tuple(sorted(wanted)) if wanted else DEFAULT_OUTPUT_KINDS
