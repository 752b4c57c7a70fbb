"""Result delivery: one attempt to send a job's files to one destination, and the retry delay.

The job runner calls :func:`send_files` once per attempt and destination and
decides from the exception type whether to try again after
:func:`backoff_delay_s`. The protocols live in their own modules:
:mod:`node.store_scu` (DICOM C-STORE) and :mod:`node.stow` (DICOMweb
STOW-RS); the outcome types in :mod:`node.delivery_outcome`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from config.settings import Destination
from node.delivery_outcome import (
    DeliveryError,
    DeliveryReceipt,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from node.store_scu import send_dimse
from node.stow import send_stow

__all__ = [
    "DeliveryError",
    "DeliveryReceipt",
    "PermanentDeliveryError",
    "TransientDeliveryError",
    "backoff_delay_s",
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
        if destination.protocol == "stow-rs":
            receipt = send_stow(destination, files)
        else:
            receipt = send_dimse(destination, files)
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


def backoff_delay_s(attempt: int, initial_s: float, maximum_s: float) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after ``attempt`` failed.

    Exponential: ``initial_s * 2 ** (attempt - 1)``, capped at ``maximum_s``.
    Deterministic on purpose, without jitter: jitter spreads a herd of clients
    retrying one server, but a node has a few job workers and a few
    destinations, so at most a handful of deliveries retry together when a PACS
    comes back; a delay that can be predicted is one an operator can read in
    the job's event log and a test can assert.

    Args:
        attempt: the number of the attempt that just failed, from 1.
        initial_s: the delay after the first failure (``delivery.initial_backoff_s``).
        maximum_s: the cap (``delivery.max_backoff_s``).

    Raises:
        ValueError: ``attempt`` below 1, or a negative delay.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if initial_s < 0 or maximum_s < 0:
        raise ValueError(f"delays must not be negative (initial {initial_s}, maximum {maximum_s})")
    # min() before the power would overflow: 2 ** 1100 is a float overflow.
    exponent = min(attempt - 1, 1023)
    return float(min(initial_s * 2.0**exponent, maximum_s))
