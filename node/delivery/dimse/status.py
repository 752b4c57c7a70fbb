"""C-STORE status codes (PS3.4 B.2.3, PS3.7 C): what was delivered, what is worth retrying.

STOW-RS reuses these codes in its WarningReason and FailureReason attributes
(PS3.18 10.5.3), so both delivery protocols classify with the same functions.
"""

from __future__ import annotations

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

# PS3.7 C.4: general warning statuses a Storage SCP may return besides 0xBxxx.
_GENERAL_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})
RESOURCE_LIMITATION = 0x0213


def describe_status(status: int) -> str:
    """``0xA700 Refused: Out of Resources``: the code and its meaning in the standard."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", "unknown status"))[1]
    return f"0x{status:04X} {meaning}".rstrip()


def is_delivered(status: int) -> bool:
    """Success, or a Warning: the peer stored the instance (possibly coerced)."""
    return status == 0x0000 or (status & 0xF000) == 0xB000 or status in _GENERAL_WARNINGS


def is_transient_status(status: int) -> bool:
    """0xA7xx Out of Resources and 0x0213 Resource Limitation: the peer may recover.

    Every other failure (0xA9xx data set does not match SOP class, 0xCxxx cannot
    understand, 0x0122 SOP class not supported, 0x0124 not authorised, ...)
    would fail again with the same bytes.
    """
    return (status & 0xFF00) == 0xA700 or status == RESOURCE_LIMITATION
