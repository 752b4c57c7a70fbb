"""Sending result files to a DICOMweb server: one STOW-RS request (PS3.18 10.5).

Why urllib: one POST and one JSON answer need no HTTP library beyond the
standard one. The files are sent as they are on disk (Part 10, file meta
included), each as an ``application/dicom`` part of one
``multipart/related`` body; results are a few megabytes, so the body is built
in memory.

The answer is a DICOM JSON dataset: ReferencedSOPSequence (0008,1199) lists
what was stored, each item possibly with a WarningReason (0008,1196);
FailedSOPSequence (0008,1198) what was not, each with a FailureReason
(0008,1197) using the C-STORE status codes. HTTP 200 means everything was
stored; 202 means some warnings or failures; 409 and other 4xx carry the same
sequences when the server has them. Only instances the answer lists as stored
count as delivered. Classification follows the C-STORE rules:
connection errors, timeouts, 5xx, 408/429 and 0xA7xx failure reasons are
transient; other 4xx and failure reasons are permanent.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException, HTTPMessage
from io import BytesIO
from pathlib import Path
from typing import IO, Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from segnode.config.destinations import StowDestination
from segnode.node.delivery.dimse.status import describe_status, is_transient_status
from segnode.node.delivery.outcome import (
    DeliveryError,
    DeliveryReceipt,
    PermanentDeliveryError,
    TransientDeliveryError,
)

log = logging.getLogger(__name__)

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"

# Worth retrying although 4xx: the server timed out reading us, or asks us to slow down.
_TRANSIENT_HTTP_CLIENT_ERRORS = frozenset({408, 429})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn the POST into a GET of the new URL (301-303),
    whose 200 (a login page, a study listing) must never read as "stored"."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


@dataclass(frozen=True)
class StowAnswer:
    """The parsed STOW-RS response: per SOP Instance UID, what the server said."""

    stored: dict[str, int]
    """Referenced instances -> 0x0000, or their WarningReason (e.g. 0xB000)."""
    failed: dict[str, int]
    """Failed instances -> FailureReason (a C-STORE status, e.g. 0xA700, 0x0122)."""


def multipart_body(files: Sequence[bytes]) -> tuple[bytes, str]:
    """The ``multipart/related; type="application/dicom"`` body and its Content-Type."""
    boundary = f"segnode-{uuid.uuid4().hex}"
    marker = boundary.encode()
    while any(marker in data for data in files):  # practically never: 128 random bits
        boundary = f"segnode-{uuid.uuid4().hex}"
        marker = boundary.encode()
    parts = []
    for data in files:
        parts.append(
            b"--" + marker + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
        )
    body = b"".join(parts) + b"--" + marker + b"--\r\n"
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, content_type


def parse_answer(text: bytes) -> StowAnswer | None:
    """Read the DICOM JSON response; ``None`` when the body is empty or not such JSON."""
    if not text.strip():
        return None
    try:
        document: Any = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if not isinstance(document, dict):
        return None
    return StowAnswer(
        stored=_items(document, _REFERENCED_SOP_SEQUENCE, _WARNING_REASON),
        failed=_items(document, _FAILED_SOP_SEQUENCE, _FAILURE_REASON),
    )


def _items(document: dict[str, Any], sequence_tag: str, reason_tag: str) -> dict[str, int]:
    found: dict[str, int] = {}
    element = document.get(sequence_tag)
    items = element.get("Value", []) if isinstance(element, dict) else []
    for item in items:
        if not isinstance(item, dict):
            continue
        uid = _first_value(item, _REFERENCED_SOP_INSTANCE_UID)
        reason = _first_value(item, reason_tag)
        if isinstance(uid, str):
            found[uid] = int(reason) if isinstance(reason, int) else 0
    return found


def _first_value(item: dict[str, Any], tag: str) -> object:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _read_files(destination: str, files: Sequence[Path]) -> list[tuple[str, bytes]]:
    """(SOP Instance UID, file bytes) for each file, checked to be DICOM Part 10."""
    contents = []
    for path in files:
        try:
            data = Path(path).read_bytes()
            header = dcmread(BytesIO(data), stop_before_pixels=True)
            uid = str(header.SOPInstanceUID)
        except (OSError, InvalidDicomError, AttributeError) as exc:
            raise PermanentDeliveryError(
                destination,
                f"cannot read result file {Path(path).name}: {exc}; the job's output must be rewritten",
                cause="invalid-file",
            ) from exc
        contents.append((uid, data))
    return contents


def _failure_error(
    destination: StowDestination, answer: StowAnswer, sent: Sequence[str], http_status: int
) -> DeliveryError:
    """Some instances failed: transient only when every FailureReason is 0xA7xx/0x0213."""
    reasons = ", ".join(f"{uid}: {describe_status(code)}" for uid, code in answer.failed.items())
    kind = (
        TransientDeliveryError
        if all(is_transient_status(code) for code in answer.failed.values())
        else PermanentDeliveryError
    )
    return kind(
        destination.name,
        f"{destination.url} (HTTP {http_status}) refused {len(answer.failed)} of {len(sent)} "
        f"instances: {reasons}",
        cause="stow-failed-sop",
        delivered=tuple(uid for uid in sent if uid in answer.stored),
    )


def _http_error(
    destination: StowDestination, error: urllib.error.HTTPError, sent: Sequence[str]
) -> DeliveryError:
    answer = parse_answer(error.read() or b"")
    if answer is not None and answer.failed:
        return _failure_error(destination, answer, sent, error.code)
    message = f"{destination.url} answered HTTP {error.code} {error.reason}"
    if error.code >= 500 or error.code in _TRANSIENT_HTTP_CLIENT_ERRORS:
        return TransientDeliveryError(destination.name, message, cause="http-status")
    if error.code == 404:
        message += " (check the destination's url: it must be the DICOMweb /studies endpoint)"
    elif 300 <= error.code < 400:
        message += f" (redirects to {error.headers.get('Location')}; configure that url)"
    return PermanentDeliveryError(destination.name, message, cause="http-status")


def send_stow(destination: StowDestination, files: Sequence[Path]) -> DeliveryReceipt:
    """POST every file to ``destination.url`` in one STOW-RS request (one attempt).

    Raises:
        TransientDeliveryError: connection refused/reset, timeout, HTTP 5xx/408/429,
            or every failed instance failed with 0xA7xx (out of resources).
        PermanentDeliveryError: HTTP 4xx, any other failed instance, or an
            instance the server neither stored nor listed as failed.
    """
    started = time.monotonic()
    contents = _read_files(destination.name, files)
    if not contents:
        return DeliveryReceipt(destination.name, (), {}, 0.0)
    sent = [uid for uid, _ in contents]
    body, content_type = multipart_body([data for _, data in contents])
    request = urllib.request.Request(
        destination.url,
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    try:
        with _OPENER.open(request, timeout=destination.timeout_s) as response:
            status = int(response.status)
            text = response.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(destination, exc, sent) from exc
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {destination.timeout_s:g} s"
        raise TransientDeliveryError(
            destination.name,
            f"cannot POST to {destination.url}: {reason}",
            cause="connection-failed",
        ) from exc

    answer = parse_answer(text)
    if answer is None:
        # A STOW-RS server answers with a Store Instances Response (PS3.18 10.5.3); a
        # body we cannot read confirms nothing, whatever the status, so nothing counts
        # as delivered.
        raise PermanentDeliveryError(
            destination.name,
            f"{destination.url} answered HTTP {status} without a DICOM JSON response listing "
            "the stored instances; check that the url is a STOW-RS endpoint",
            cause="stow-unacknowledged",
        )
    if answer.failed:
        raise _failure_error(destination, answer, sent, status)
    missing = [uid for uid in sent if uid not in answer.stored]
    if missing:
        raise PermanentDeliveryError(
            destination.name,
            f"{destination.url} answered HTTP {status} but did not list {len(missing)} of "
            f"{len(sent)} instances as stored: {', '.join(missing)}",
            cause="stow-unacknowledged",
        )
    statuses = {uid: answer.stored[uid] for uid in sent}
    detail = tuple(
        f"{uid}: warning {describe_status(code)}" for uid, code in statuses.items() if code != 0
    )
    receipt = DeliveryReceipt(
        destination=destination.name,
        sop_instance_uids=tuple(sent),
        statuses=statuses,
        duration_s=time.monotonic() - started,
        detail=detail,
    )
    log.debug("stow-rs delivered", extra={"destination": destination.name, "instances": len(sent)})
    return receipt
