"""Result delivery: one attempt to send a job's files to one destination, by its protocol.

The sending step calls :func:`send_files` once per attempt and destination and
decides from the exception type whether to try again after
:func:`segnode.node.backoff.backoff_delay_s`. The protocols live in their own modules:
:mod:`segnode.node.delivery.dimse.scu` (DICOM C-STORE) and :mod:`segnode.node.delivery.stow` (DICOMweb
STOW-RS); the outcome types in :mod:`segnode.node.delivery.outcome`.

The configuration's type picks the client: a destination is a ``DimseDestination`` or a
``StowDestination`` (a discriminated union on ``protocol``), so a new protocol is a new
model in ``config/settings.py`` and one more ``case`` here, which mypy checks is exhaustive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import assert_never

from segnode.config.destinations import Destination, DimseDestination, StowDestination
from segnode.node.delivery.dimse.scu import send_dimse
from segnode.node.delivery.outcome import (
    DeliveryError,
    DeliveryReceipt,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from segnode.node.delivery.stow import send_stow

__all__ = [
    "DeliveryError",
    "DeliveryReceipt",
    "PermanentDeliveryError",
    "TransientDeliveryError",
    "send_files",
]

log = logging.getLogger(__name__)


def send_files(destination: Destination, files: Sequence[Path]) -> DeliveryReceipt:
    """Send ``files`` to ``destination`` by its protocol: ONE attempt, no retry here.

    Args:
        destination: a configured ``[[delivery.destinations]]`` entry.
        files: DICOM Part 10 files (the job's SEG, SR, ...), sent as they are.

    Returns:
        The receipt: every file was acknowledged (Success or Warning).

    Raises:
        TransientDeliveryError: retry after :func:`backoff_delay_s`.
        PermanentDeliveryError: do not retry; the message says what to change.
    """
    extra = {"destination": destination.name, "protocol": destination.protocol, "files": len(files)}
    started = time.monotonic()
    try:
        match destination:
            case DimseDestination():
                receipt = send_dimse(destination, files)
            case StowDestination():
                receipt = send_stow(destination, files)
            case _:
                assert_never(destination)
    except DeliveryError as exc:
        # The message may name SOP Instance UIDs (STOW-RS failures) or quote the peer's
        # free-text error comment: it goes to the job's event log, and here only at DEBUG.
        log.warning(
            "delivery attempt failed",
            extra={
                **extra,
                "cause": exc.cause,
                "retry": isinstance(exc, TransientDeliveryError),
                "delivered": len(exc.delivered),
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        log.debug("delivery attempt failed", extra={**extra, "error": str(exc)})
        raise
    log.info(
        "delivered",
        extra={
            **extra,
            "duration_s": round(receipt.duration_s, 3),
            "warnings": len(receipt.detail),
        },
    )
    return receipt
