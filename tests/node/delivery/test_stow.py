"""STOW-RS to a DICOMweb server (``delivery.stow``): the request, the DICOM JSON answer, and how
each HTTP outcome is classified, against a scripted loopback server."""

from __future__ import annotations

import json
from collections.abc import Callable
from email import message_from_bytes

import pytest

from segnode.node.delivery.outcome import PermanentDeliveryError, TransientDeliveryError
from segnode.node.delivery.stow import multipart_body, parse_answer, send_stow
from tests.helpers import free_port
from tests.node.delivery.peers import ScriptedHttp, mr_files, sop_uid, stow_answer, stow_destination

# --- the message format ------------------------------------------------------------------


def test_multipart_body_carries_each_file_unchanged() -> None:
    files = [b"\x00DICM first", b"second\r\n--with a dash line"]
    body, content_type = multipart_body(files)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    message = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = [part for part in message.walk() if not part.is_multipart()]
    assert [part.get_content_type() for part in parts] == ["application/dicom"] * 2
    assert [part.get_payload(decode=True) for part in parts] == files


def test_stow_answer_is_read_from_dicom_json() -> None:
    # The shape orthanc-dicomweb 1.7 returns (HTTP 409 for a study URL the instance is not in).
    answer = {
        "00081190": {"vr": "UR", "Value": ["http://pacs/dicom-web/studies/1.2"]},
        "00081198": {"vr": "SQ", "Value": [{
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.66.4"]},
            "00081155": {"vr": "UI", "Value": ["1.2.3.4"]},
            "00081197": {"vr": "US", "Value": [272]},
        }]},
        "00081199": {"vr": "SQ", "Value": [{
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.34"]},
            "00081155": {"vr": "UI", "Value": ["1.2.3.5"]},
            "00081196": {"vr": "US", "Value": [0xB000]},
        }]},
    }
    parsed = parse_answer(json.dumps(answer).encode())
    assert parsed is not None
    assert parsed.failed == {"1.2.3.4": 0x0110}
    assert parsed.stored == {"1.2.3.5": 0xB000}
    assert parse_answer(b"") is None and parse_answer(b"<html>") is None


# --- against a scripted server -----------------------------------------------------------


def test_stow_request_carries_the_files_and_a_warning_is_reported(http: Callable[..., ScriptedHttp]) -> None:
    files = mr_files(2)
    uids = [sop_uid(path) for path in files]
    server = http(200, stow_answer({uids[0]: 0, uids[1]: 0xB000}, {}))
    receipt = send_stow(stow_destination(server.url), files)
    assert receipt.statuses == {uids[0]: 0x0000, uids[1]: 0xB000}
    assert len(receipt.detail) == 1 and "0xB000" in receipt.detail[0]
    [(headers, body)] = server.requests
    assert headers["Accept"] == "application/dicom+json"
    message = message_from_bytes(f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    parts = [part.get_payload(decode=True) for part in message.walk() if not part.is_multipart()]
    assert parts == [path.read_bytes() for path in files]


def test_stow_out_of_resources_for_some_instances_is_transient(http: Callable[..., ScriptedHttp]) -> None:
    files = mr_files(2)
    uids = [sop_uid(path) for path in files]
    server = http(202, stow_answer({uids[0]: 0}, {uids[1]: 0xA700}))
    with pytest.raises(TransientDeliveryError, match="refused 1 of 2 instances.*0xA700") as caught:
        send_stow(stow_destination(server.url), files)
    assert caught.value.delivered == (uids[0],)


@pytest.mark.parametrize(("status", "error", "text"), [
    (503, TransientDeliveryError, "HTTP 503"),
    (429, TransientDeliveryError, "HTTP 429"),
    (400, PermanentDeliveryError, "HTTP 400"),
    (415, PermanentDeliveryError, "HTTP 415"),
])
def test_stow_http_errors_are_classified(
    http: Callable[..., ScriptedHttp], status: int, error: type[Exception], text: str
) -> None:
    server = http(status)
    with pytest.raises(error, match=text):
        send_stow(stow_destination(server.url), mr_files(1))


def test_stow_redirect_is_not_followed(http: Callable[..., ScriptedHttp]) -> None:
    server = http(302, headers={"Location": "http://elsewhere/login"})
    with pytest.raises(PermanentDeliveryError, match="HTTP 302.*redirects to http://elsewhere/login"):
        send_stow(stow_destination(server.url), mr_files(1))
    assert len(server.requests) == 1


def test_stow_200_without_a_dicom_json_answer_confirms_nothing(http: Callable[..., ScriptedHttp]) -> None:
    server = http(200, b"<html>welcome</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(PermanentDeliveryError, match="without a DICOM JSON response") as caught:
        send_stow(stow_destination(server.url), mr_files(1))
    assert caught.value.cause == "stow-unacknowledged"


def test_stow_connection_refused_is_transient() -> None:
    destination = stow_destination(f"http://127.0.0.1:{free_port()}/dicom-web/studies")
    with pytest.raises(TransientDeliveryError, match="Connection refused") as caught:
        send_stow(destination, mr_files(1))
    assert caught.value.cause == "connection-failed"
